import os, subprocess, sys
from pathlib import Path
import pytest

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# the settings the suite was written for (no recipe, 400 records cut to 300 characters): tests/fixtures/settings.ini
os.environ.setdefault("FINETUNE_KIT_SETTINGS", str(Path(__file__).resolve().parent/"fixtures"/"settings.ini"))

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

@pytest.fixture(scope="session")
def root(): return ROOT

@pytest.fixture(scope="session")
def tiny_model_dir():
    "The cached tiny random chat model (built once per machine)."
    from finetune_kit.testing import tiny_model_path
    return tiny_model_path()

def run_cli(*args, cwd=ROOT, timeout=600, **kw):
    "Run the `finetune-kit` console script; return the CompletedProcess."
    return subprocess.run([str(BIN/"finetune-kit"), *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=timeout, **kw)
