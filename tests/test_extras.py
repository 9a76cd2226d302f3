"Optional tools as extras: MLflow is not a base dependency; without it, report_to mlflow is a one-line error naming the extra."
import re, sys, tomllib, warnings
from pathlib import Path
from unittest import mock
import pytest
from helpers import ROOT
from finetune_kit.settings import make_config
from finetune_kit.files import KitError

INSTALL = "pip install 'finetune-kit[mlflow]'"

def test_mlflow_is_an_extra_that_the_ci_install_installs():
    proj = tomllib.loads((ROOT/"pyproject.toml").read_text())["project"]
    assert not [d for d in proj["dependencies"] if d.lower().startswith("mlflow")]
    assert proj["optional-dependencies"]["mlflow"] == ["mlflow>=3.9"]  # the tested floor (scripts/test_floor.sh)
    extras = re.search(r'-e "\.\[([\w,-]+)\]"', (ROOT/"scripts/install.sh").read_text()).group(1).split(",")
    assert "mlflow" in extras and "dev" in extras
    # fairlearn stays in the base: it adds one 0.9 MiB package (its dependencies are the base's own)
    assert [d for d in proj["dependencies"] if d.startswith("fairlearn")]

def test_report_to_mlflow_without_mlflow_names_the_extra(tmp_path):
    from finetune_kit.tracking import end_tracking, start_tracking
    from finetune_kit.evaluate.run import log_tracking
    cfg = make_config(settings=False, report_to="mlflow", runs_dir=str(tmp_path), run_id="r")
    with mock.patch.dict(sys.modules, {"mlflow": None}):  # as if not installed
        with pytest.raises(KitError, match=r"^report_to mlflow needs MLflow, an optional extra: " + INSTALL.replace("[", r"\[").replace("]", r"\]") + "$"):
            start_tracking(cfg, tmp_path/"r")
        with pytest.raises(KitError, match="finetune-kit\\[mlflow\\]"): end_tracking("mlflow")
        with warnings.catch_warnings(record=True) as w:  # evaluation keeps its folder and says what to install
            warnings.simplefilter("always")
            assert log_tracking(cfg, tmp_path, {"systems": ["base"], "base": {"accuracy": 0.5}}, {}) is None
        assert any(INSTALL in str(x.message) for x in w)

@pytest.mark.slow  # a fresh Python process
def test_no_module_imports_mlflow_at_import_time():
    import subprocess
    code = ("import sys; sys.modules['mlflow'] = None; import finetune_kit.cli, finetune_kit.train, finetune_kit.evaluate, "
            "finetune_kit.sweeps, finetune_kit.deploy; print('ok')")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stderr[-2000:]
