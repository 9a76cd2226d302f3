"""Reliability (issue 15): never lose a user's data or work, never a traceback, every value checked.

Each numbered reproduction of the issue is a test here (`test_issue_NN_...`) that failed on the code before the fix;
then the table-driven bad-input test (every command: bad paths, bad values, damaged files -> exit 2 and one line
naming the file, record or parameter) and hypothesis tests that feed every reader arbitrary bytes, nesting and sizes.
"""
import csv, json, math, os, shutil, subprocess, sys, time
from pathlib import Path

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from typer.testing import CliRunner

from conftest import ROOT, BIN, run_cli
from finetune_kit.cli import app
from finetune_kit.config import ConfigError, check_param, make_config
from finetune_kit.files import KitError

FIX = ROOT/"tests/fixtures/data"
CLS = ROOT/"tests/fixtures/evaluate/cls"
runner = CliRunner()
TINY = {"base_model": "tiny-test", "source": "bbc", "max_records": 60, "max_chars": 120, "report_to": "none",
        "logging_steps": 1, "seed": 3, "per_device_train_batch_size": 4}


def lines(p): return [json.loads(l) for l in Path(p).read_text().splitlines() if l.strip()]

def snapshot(folder) -> dict:
    "Every file under `folder` with its bytes."
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(Path(folder).rglob("*")) if p.is_file()}

def prep_cli(*args):
    return runner.invoke(app, ["data", "prepare", *map(str, args)])

def one_error_line(r) -> str:
    "The single `error: ...` line of a failed command (and nothing that looks like a traceback)."
    out = r.output
    errs = [l for l in out.splitlines() if l.startswith("error: ")]
    assert r.exit_code == 2 and len(errs) == 1 and "Traceback" not in out, (r.exit_code, out, r.exception)
    return errs[0]


# --- 9. resume reports the whole run; a finished run is not trained again; a damaged checkpoint falls back -------

def _train(tmp, run_id, **kw):
    from finetune_kit.train import train
    return train(make_config({**TINY, "runs_dir": str(tmp), "run_id": run_id, **kw}, settings=False))

def _interrupt_after(run_dir, step):
    "Leave `run_dir` as a run killed after its checkpoint at `step` (later checkpoints, adapter and summary gone)."
    for ck in (run_dir/"checkpoints").glob("checkpoint-*"):
        if int(ck.name.split("-")[1]) > step: shutil.rmtree(ck)
    shutil.rmtree(run_dir/"adapter"); (run_dir/"summary.json").unlink()

@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    "One uninterrupted run of 8 steps, checkpoints every 4."
    return _train(tmp_path_factory.mktemp("runs"), "straight", max_steps=8, save_steps=4, save_total_limit=3)

def test_issue_09_resume_reports_whole_run_loss_and_tokens(straight, tmp_path):
    from finetune_kit.train import train
    res = _train(tmp_path, "cut", max_steps=8, save_steps=4, save_total_limit=3)
    _interrupt_after(res.run_dir, 4)
    s = train(None, run_dir=res.run_dir, resume=True).summary
    want = straight.summary
    assert s["steps"] == 8 and s["train_loss"] == pytest.approx(want["train_loss"], abs=1e-6)
    assert s["num_tokens"] == want["num_tokens"] > 0
    rows = [json.loads(l) for l in (res.run_dir/"metrics.jsonl").read_text().splitlines()]
    assert [r["num_tokens"] for r in rows if "num_tokens" in r] == [r["num_tokens"] for r in
            map(json.loads, (straight.run_dir/"metrics.jsonl").read_text().splitlines()) if "num_tokens" in r]

def test_issue_09_resume_on_a_finished_run_trains_nothing(straight, tmp_path, capsys):
    from finetune_kit.train import train
    run = tmp_path/"done"; shutil.copytree(straight.run_dir, run)
    before = snapshot(run)
    res = train(None, run_dir=run, resume=True)
    assert res.summary["steps"] == 8 and snapshot(run) == before
    assert "finished at step 8: nothing to resume" in capsys.readouterr().out

def test_issue_09_damaged_newest_checkpoint_falls_back_to_the_older_one(straight, tmp_path, capsys):
    from finetune_kit.train import train
    res = _train(tmp_path, "damaged", max_steps=8, save_steps=4, save_total_limit=3)
    _interrupt_after(res.run_dir, 8)  # killed after its last checkpoint
    ck = res.run_dir/"checkpoints"
    with open(ck/"checkpoint-8"/"adapter_model.safetensors", "r+b") as f: f.truncate(1000)
    s = train(None, run_dir=res.run_dir, resume=True).summary
    assert "note: checkpoint-8 is damaged (adapter_model.safetensors: " in capsys.readouterr().out
    assert s["steps"] == 8 and s["train_loss"] == pytest.approx(straight.summary["train_loss"], abs=1e-6)
    assert (ck/"damaged-checkpoint-8").is_dir()  # kept for a look, out of Trainer's way
    with open(ck/"checkpoint-8"/"optimizer.pt", "r+b") as f: f.truncate(2000)  # the optimizer this time
    _interrupt_after(res.run_dir, 8)
    assert train(None, run_dir=res.run_dir, resume=True).summary["steps"] == 8
