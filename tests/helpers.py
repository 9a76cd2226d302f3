"""What several test files share: paths, the tiny-model parameter sets, a config and an adapter on the tiny model,
and small file and process helpers. Fixtures (and the `slow` rules) are in conftest.py."""
import json, socket, subprocess, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
FIX = ROOT/"tests/fixtures/data"               # raw sources for the data stage
CLS = ROOT/"tests/fixtures/evaluate/cls"       # a prepared classification split (train/test) for evaluation

# --- flat run parameters on the tiny random model (`tiny-test`, built once per machine) ---
TINY = {"base_model": "tiny-test", "report_to": "none"}
# training on the packaged BBC set: 120 records -> 96 training records, 12 steps per epoch at batch 8
TRAIN = {**TINY, "source": "bbc", "max_records": 120, "max_chars": 200, "logging_steps": 1, "seed": 3}
TRAIN_SMALL = {**TRAIN, "max_records": 60, "max_chars": 120}   # half the records, shorter texts
# the finetune workbook end to end (data, train, evaluate) in seconds
JOB = {**TINY, "max_records": 60, "max_steps": 2, "max_eval_samples": 6, "bootstrap_samples": 20}


def tiny_config(*params:dict, **kw):
    "A run config on the tiny model that ignores settings.ini: `TINY`, then each dict of `params`, then `kw`."
    from finetune_kit.settings import make_config
    merged = dict(TINY)
    for p in params: merged.update(p)
    return make_config({**merged, **kw}, settings=False)


def param_args(params:dict) -> list[str]:
    "`params` as the command line's `-p NAME VALUE` arguments."
    return [x for k, v in params.items() for x in ("-p", k, str(v))]


def tiny_adapter(folder, seed:int=0, method:str="lora", base="tiny-test"):
    "A PEFT adapter on `base` saved to `folder`; a LoRA's B is random (seeded), so it moves the answers."
    import torch
    from finetune_kit.models import load_model
    from finetune_kit.adapters import apply_peft, save_adapter
    cfg = tiny_config(base_model=str(base), dtype="float32", peft_method=method, lora_r=8)
    m, tok = load_model(cfg, progress=False)
    pm = apply_peft(m, cfg)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if "lora_B" in n: p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return save_adapter(pm, folder, tok)


def lines(p) -> list:
    "The JSON records of a JSONL file (blank lines skipped)."
    return [json.loads(l) for l in Path(p).read_text().splitlines() if l.strip()]


def free_port() -> int:
    "A TCP port free on 127.0.0.1 right now."
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0)); return s.getsockname()[1]


def cli_commands(app) -> list[str]:
    "Every command of the Typer `app` that runs something, as its words (`data prepare`, `train`, ...)."
    from typer.main import get_command
    def leaves(cmd, path=()):
        if hasattr(cmd, "commands"):
            for name, sub in cmd.commands.items(): yield from leaves(sub, (*path, name))
        else: yield " ".join(path)
    return list(leaves(get_command(app)))


def run_cli(*args, cwd=ROOT, timeout=600, **kw):
    "Run the `finetune-kit` console script; return the CompletedProcess. Tests get it as the slow `run_cli` fixture."
    return subprocess.run([str(BIN/"finetune-kit"), *map(str, args)], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, **kw)
