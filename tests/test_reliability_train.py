"""Reliability, round 2 (issue 24): training, checkpoints, sweeps, evaluation, export, models and monitor.

Each item of the issue in this area is a test here that failed on the code before its fix (`test_r2_...`); the
command lines are also rows of the bad-input table (tests/test_bad_input.py).
"""
import json, math, os, shutil, signal, subprocess, sys, time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from helpers import ROOT, BIN
from finetune_kit.cli import app
from finetune_kit.settings import make_config

FIX = ROOT/"tests/fixtures/data"
CLS = ROOT/"tests/fixtures/evaluate/cls"
runner = CliRunner()
TINY = {"base_model": "tiny-test", "source": "bbc", "max_records": 60, "max_chars": 120, "report_to": "none",
        "logging_steps": 1, "seed": 3, "per_device_train_batch_size": 4}
CLS_P = ["-p", "text_field", "body", "-p", "label_field", "topic"]


def rows(p): return [json.loads(l) for l in Path(p).read_text().splitlines() if l.strip()]

def snapshot(folder) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(Path(folder).rglob("*")) if p.is_file()}

def one_error_line(r) -> str:
    "The single `error: ...` line of a failed command (and nothing that looks like a traceback)."
    errs = [l for l in r.output.splitlines() if l.startswith("error: ")]
    assert r.exit_code == 2 and len(errs) == 1 and "Traceback" not in r.output, (r.exit_code, r.output[-3000:],
                                                                                  repr(r.exception))
    return errs[0]

def cli(*args): return runner.invoke(app, [str(a) for a in args])


# --- train -p data_dir: the prepared folder's data, and data parameters beside it are an error ---------------------

def _prepared(tmp_path, *more) -> Path:
    out = tmp_path/"prepared"
    r = cli("data", "prepare", FIX/"classification.jsonl", "--out", out, *CLS_P, "-p", "max_chars", "90", *more)
    assert r.exit_code == 0, r.output
    return out

def test_r2_data_parameters_beside_data_dir_are_an_error_naming_them(tmp_path):
    data = _prepared(tmp_path)
    r = cli("train", "-p", "data_dir", data, "-p", "max_records", "5", "-p", "label_set", "a,b", "-p", "source", "bbc",
            "-p", "runs_dir", tmp_path/"runs", "-p", "base_model", "tiny-test")
    line = one_error_line(r)
    assert "source, max_records, label_set" in line and str(data) in line, line
    assert not (tmp_path/"runs").exists()
    line = one_error_line(cli("train", "-p", "data_dir", data, "-p", "task", "ner", "-p", "runs_dir", tmp_path/"runs"))
    assert "task" in line and "classification" in line  # the folder's task is not the one asked for

def test_r2_config_json_records_the_data_the_prepared_folder_holds(tmp_path):
    "settings.ini says max_records 400, max_chars 300; the folder was made with others: config.json says the folder's."
    from finetune_kit.config import load_config
    from finetune_kit.train import train
    data = _prepared(tmp_path, "-p", "max_records", "30")
    made = json.loads((data/"data.json").read_text())["config"]
    cfg = make_config({"data_dir": str(data), "base_model": "tiny-test", "report_to": "none", "max_steps": 1,
                       "runs_dir": str(tmp_path/"runs"), "run_id": "r", "task": "classification"})
    assert (cfg.data.max_records, cfg.data.max_chars, cfg.data.text_field) == (30, 90, "body")
    res = train(cfg)
    saved = load_config(res.run_dir/"config.json").data
    assert (saved.max_records, saved.max_chars, saved.label_field, saved.data_dir) == (
        made["max_records"], made["max_chars"], "topic", str(data))


# --- training runs: resume's last metrics row, damaged checkpoints, divergence advice ------------------------------

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

def test_r2_after_resume_the_last_metrics_row_reports_the_whole_run_as_summary_json_does(straight, tmp_path):
    from finetune_kit.train import train
    res = _train(tmp_path, "cut", max_steps=8, save_steps=4, save_total_limit=3)
    _interrupt_after(res.run_dir, 4)
    state = json.loads((res.run_dir/"checkpoints/checkpoint-4/trainer_state.json").read_text())
    before = state["stateful_callbacks"]["KitRunTotals"]["seconds"]  # the first part's seconds, saved with its checkpoint
    s = train(None, run_dir=res.run_dir, resume=True).summary
    last = rows(res.run_dir/"metrics.jsonl")[-1]
    assert last["train_loss"] == pytest.approx(s["train_loss"], abs=1e-9)
    assert last["train_loss"] == pytest.approx(straight.summary["train_loss"], abs=1e-6)
    assert last["train_runtime"] == pytest.approx(s["train_seconds"], abs=0.01)
    assert [r["step"] for r in rows(res.run_dir/"metrics.jsonl") if "train_loss" in r] == [8]  # one final row
    assert last["train_runtime"] > before > 0  # both parts, not the resumed part alone (wall times of two runs on a
                                               # busy machine are not comparable, so no comparison with `straight`)

def _flip(path, n=64):
    "Flip `n` bytes in the middle of `path` (its size unchanged)."
    b = bytearray(Path(path).read_bytes())
    for i in range(len(b) // 2, len(b) // 2 + n): b[i] ^= 0xFF
    Path(path).write_bytes(bytes(b))

def test_r2_a_checkpoint_with_flipped_bytes_is_moved_aside_and_the_run_resumes_from_the_one_before(straight,
                                                                                                     tmp_path, capsys):
    from finetune_kit.train import train
    res = _train(tmp_path, "flipped", max_steps=8, save_steps=4, save_total_limit=3)
    _interrupt_after(res.run_dir, 8)  # killed after its last checkpoint
    ck = res.run_dir/"checkpoints"
    _flip(ck/"checkpoint-8"/"adapter_model.safetensors")
    s = train(None, run_dir=res.run_dir, resume=True).summary
    out = capsys.readouterr().out
    assert "note: checkpoint-8 is damaged (adapter_model.safetensors: its bytes do not match" in out, out
    assert (ck/"damaged-checkpoint-8").is_dir() and "resuming from checkpoint-4" in out
    assert s["steps"] == 8 and s["train_loss"] == pytest.approx(straight.summary["train_loss"], abs=1e-6)

def _poison_at(step):
    "A callback that sets the adapter's weights to NaN after optimizer step `step` (a diverged run, made quickly)."
    import torch
    from transformers import TrainerCallback
    class Poison(TrainerCallback):
        def on_step_end(self, args, state, control, model=None, **kw):
            if state.global_step == step:
                with torch.no_grad():
                    for n, p in model.named_parameters():
                        if "lora_" in n: p.fill_(float("nan"))
    return Poison()

def test_r2_a_diverged_loss_gives_advice_that_can_be_followed(tmp_path):
    from finetune_kit.checkpoints import TrainingError
    from finetune_kit.train import train
    cfg = make_config({**TINY, "runs_dir": str(tmp_path), "run_id": "nan", "max_steps": 6, "save_steps": 2,
                       "learning_rate": 0.003}, settings=False)
    with pytest.raises(TrainingError) as e: train(cfg, callbacks=[_poison_at(3)])
    msg = str(e.value)
    assert "step 4: loss is nan" in msg and "learning_rate" in msg and "0.003" in msg and "\n" not in msg, msg
    assert "-p learning_rate" in msg and "and resume" not in msg  # --resume takes no parameters: not advised


# --- failed and interrupted `train` calls: nothing half made; the resume command on Ctrl-C --------------------------

def test_r2_a_train_call_that_fails_before_its_first_checkpoint_leaves_no_run_folder(tmp_path):
    r = cli("train", "-p", "runs_dir", tmp_path/"runs", "-p", "base_model", "tiny-test", "-p", "source",
            FIX/"classification.jsonl", *CLS_P, "-p", "lora_r", "1000000000", "-p", "report_to", "none")
    line = one_error_line(r)
    assert "lora_r 1000000000" in line
    assert not (tmp_path/"runs").exists() or not list((tmp_path/"runs").iterdir()), list((tmp_path/"runs").iterdir())

@pytest.mark.slow  # the console script in a process of its own, stopped with SIGINT
def test_r2_ctrl_c_during_train_prints_the_resume_command(tmp_path):
    runs = tmp_path/"runs"
    p = {**TINY, "runs_dir": runs, "run_id": "sigint", "max_steps": 400, "save_steps": 2}
    args = [x for k, v in p.items() for x in ("-p", k, str(v))]
    proc = subprocess.Popen([str(BIN/"finetune-kit"), "train", *args], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,  # Ctrl-C's default even under a background pytest:
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # (it ignores SIGINT)
    deadline, ck = time.time() + 900, runs/"sigint/checkpoints/checkpoint-2/trainer_state.json"  # a busy machine is slow
    while time.time() < deadline and not ck.exists() and proc.poll() is None: time.sleep(0.05)
    if not ck.exists():
        proc.kill(); pytest.fail(f"no checkpoint-2 within 900 s (exit {proc.poll()}): {proc.communicate()[1][-2000:]}")
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 130, (proc.returncode, err[-3000:])
    assert f"finetune-kit train --resume {runs/'sigint'}" in err and "Traceback" not in err, err[-3000:]


# --- tracebacks: an adapter too large for memory, an unknown hub model with no hub ---------------------------------

def test_r2_an_adapter_too_large_for_memory_is_refused_before_allocating(tiny_model_dir):
    from finetune_kit.adapters import apply_peft
    from finetune_kit.methods import ModelError
    from finetune_kit.models import load_model
    cfg = make_config({"base_model": "tiny-test", "lora_r": 1_000_000_000}, settings=False)
    model, _ = load_model(cfg, progress=False)
    with pytest.raises(ModelError) as e: apply_peft(model, cfg)
    msg = str(e.value)
    assert msg.startswith("lora_r 1000000000: the lora adapter would hold") and "GB" in msg and "\n" not in msg, msg
    assert not any("lora_" in n for n, _ in model.named_parameters())  # nothing was put on the model
    small = make_config({"base_model": "tiny-test", "lora_r": 8}, settings=False)
    assert sum(p.numel() for n, p in apply_peft(model, small).named_parameters() if "lora_" in n) > 0

@pytest.mark.parametrize("cmd", [
    ["train", "-p", "base_model", "nosuch-org/nosuch-model", "-p", "source", FIX/"classification.jsonl", *CLS_P],
    ["evaluate", "run", CLS, "-p", "base_model", "nosuch-org/nosuch-model"],
    ["models", "info", "nosuch-org/nosuch-model"],
    ["data", "prepare", FIX/"classification.jsonl", "--out", "o", *CLS_P, "--tokenizer", "nosuch-org/nosuch-model"],
], ids=["train", "evaluate", "models-info", "prepare-tokenizer"])
def test_r2_an_unknown_hub_model_without_hub_access_is_one_line(tmp_path, monkeypatch, cmd):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    line = one_error_line(cli(*cmd, *(["-p", "runs_dir", tmp_path/"runs"] if cmd[0] == "train" else [])))
    assert "nosuch-org/nosuch-model" in line and "hub" in line, line
    assert not (tmp_path/"runs").exists() or not list((tmp_path/"runs").iterdir())


# --- export against another base ---------------------------------------------------------------------------------

def test_r2_export_against_another_base_names_both_bases_in_one_line(tmp_path):
    import torch
    from finetune_kit.adapters import apply_peft, save_adapter
    from finetune_kit.models import load_model
    from finetune_kit.testing import make_tiny_model
    wide = make_tiny_model(tmp_path/"tiny-wide", hidden_size=96)
    cfg = make_config({"base_model": "tiny-test", "dtype": "float32", "lora_r": 4}, settings=False)
    m, tok = load_model(cfg, progress=False)
    ad = save_adapter(apply_peft(m, cfg), tmp_path/"ad", tok)
    line = one_error_line(cli("export", ad, "-p", "base_model", wide, "--out", tmp_path/"x", "--no-progress"))
    assert "tiny-test" in line and str(wide) in line and "was trained on" in line, line
    assert not (tmp_path/"x").exists()


# --- sweeps: budgets, a fixed sweep file, the failure count, the metric for the task, unknown models -----------------

@pytest.mark.parametrize("opt,says", [
    (["--max-trials", "0"], "--max-trials: must be at least 1"),
    (["--max-trials", "-2"], "--max-trials: must be at least 1"),
    (["--max-hours", "-1"], "--max-hours: must be a number above 0"),
    (["--max-hours", "0"], "--max-hours: must be a number above 0"),
    (["--max-hours", "nan"], "--max-hours: must be a number above 0"),
    (["--max-gpu-hours", "-1"], "--max-gpu-hours: must be a number above 0"),
    (["--within", "-1"], "--within: must be a number >= 0"),
    (["--within", "nan"], "--within: must be a number >= 0"),
    (["--within", "inf"], "--within: must be a number >= 0"),
])
def test_r2_sweep_budgets_out_of_range_are_refused_before_anything_runs(tmp_path, opt, says):
    line = one_error_line(cli("sweep", ROOT/"sweeps/tiny.yaml", "--dir", tmp_path/"sw", *opt))
    assert says in line, line
    assert not (tmp_path/"sw").exists()

def test_r2_pick_cheapest_never_raises_on_an_empty_neighbourhood():
    import pandas as pd
    from finetune_kit.sweeps import pick_cheapest
    t = pd.DataFrame({"state": ["complete", "complete"], "m": [0.5, 0.7], "seconds": [3.0, 1.0]})
    assert pick_cheapest(t, "m", "maximize", within=-1) is None
    assert pick_cheapest(t, "m", "maximize", within=float("nan")) is None
    assert pick_cheapest(t, "m", "maximize", within=0.3)["seconds"] == 1.0
    # right after trial 0 of a fresh sweep: one finished trial, one still running, or none finished yet
    one = pd.DataFrame({"state": ["complete", "running"], "m": [0.5, None], "seconds": [3.0, None]})
    assert pick_cheapest(one, "m", "maximize", within=0.1)["m"] == 0.5
    assert pick_cheapest(one, "m", "maximize", within=float("nan")) is None
    assert pick_cheapest(one.iloc[1:], "m", "maximize", within=0.1) is None
    assert pick_cheapest(one.iloc[:0], "m", "maximize", within=0.1) is None

def _seed_sweep(tmp_path, seed:int, metric="train/loss", **params):
    "A two-trial grid over a tiny notebook that fails while `seed` is 1, and the sweep command."
    import nbformat
    nb = nbformat.v4.new_notebook()
    cell = 'lora_r = 8\nseed = 0\nruns_dir = "runs"\nrun_id = "x"'
    nb.cells = [nbformat.v4.new_code_cell(cell, metadata={"tags": ["parameters"]}),
                nbformat.v4.new_code_cell(
                    "import json, pathlib\n"
                    "if seed == 1: raise RuntimeError('seed 1 is cursed')\n"
                    "d = pathlib.Path(runs_dir)/run_id; d.mkdir(parents=True, exist_ok=True)\n"
                    "(d/'summary.json').write_text(json.dumps({'train_loss': lora_r / 10}))")]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, tmp_path/"seeded.ipynb")
    spec = {"name": "seeded", "method": "grid", "metric": {"name": metric, "goal": "minimize"},
            "parameters": {"lora_r": {"values": [2, 4]}, "seed": {"value": seed}, **params},
            "command": ["finetune-kit", "run", str(tmp_path/"seeded.ipynb"), "--params-json", "${args_json_file}"]}
    (tmp_path/"seeded.yaml").write_text(json.dumps(spec))
    return ["sweep", str(tmp_path/"seeded.yaml"), "--dir", str(tmp_path/"sweep")]

@pytest.mark.slow  # its trials are notebook jobs (kernels)
def test_r2_retry_failed_after_fixing_the_sweep_file_runs_the_failed_trials_with_the_fix(tmp_path):
    args = _seed_sweep(tmp_path, seed=1)
    r = cli(*args)
    assert r.exit_code == 1 and "error: 2 of 2 trials failed (trial 0: cell 3 failed: RuntimeError: seed 1 is cursed)" \
        in r.output, r.output
    r = cli(*args, "--retry-failed")  # the cause is not fixed: both trials fail again, and the count says all failed
    assert r.exit_code == 1 and "error: 2 of 2 trials failed" in r.output, r.output
    _seed_sweep(tmp_path, seed=2)  # the fix is in the sweep file
    r = cli(*args, "--retry-failed")
    assert r.exit_code == 0, r.output
    assert "failed before: queued again" in r.output and "best: trial" in r.output and "train/loss = 0.2" in r.output

@pytest.mark.slow  # its trials are notebook jobs (kernels)
def test_r2_a_changed_sweep_file_is_refused_once_a_trial_finished_with_the_old_one(tmp_path):
    args = _seed_sweep(tmp_path, seed=2)
    assert cli(*args).exit_code == 0
    _seed_sweep(tmp_path, seed=3)
    line = one_error_line(cli(*args))
    assert "parameters.seed" in line and "trials 0, 1 finished" in line, line

def test_r2_failures_outside_a_fixed_sweep_file_s_space_are_neither_retried_nor_counted():
    "A fixed file may change the searched values: only the failures still in its space are run again and counted."
    import optuna
    from optuna.distributions import CategoricalDistribution
    from optuna.trial import TrialState, create_trial
    from finetune_kit.sweeps import failed_trials, retry_failed
    old = {"lora_r": CategoricalDistribution([2, 4])}
    study = optuna.create_study()
    for r in (2, 4):
        study.add_trial(create_trial(params={"lora_r": r}, distributions=old, state=TrialState.FAIL,
                                     user_attrs={"outcome": "failed", "error": "boom"}))
    new = {"lora_r": CategoricalDistribution([4, 8])}
    assert [t.params["lora_r"] for t in failed_trials(study, new)] == [4]
    assert retry_failed(study, say=lambda *a: None, space=new) == [1]
    assert [t.system_attrs["fixed_params"] for t in study.get_trials(states=(TrialState.WAITING,))] == [{"lora_r": 4}]
    assert failed_trials(study, new) == [] and [t.number for t in failed_trials(study)] == [0]

def test_r2_a_metric_the_task_never_logs_stops_the_sweep_before_any_trial(tmp_path):
    args = _seed_sweep(tmp_path, seed=2, metric="eval/tuned/rougeL")
    line = one_error_line(cli(*args))
    assert "eval/tuned/rougeL" in line and "classification" in line and "macro_f1" in line, line
    assert not (tmp_path/"sweep").exists()
    args = _seed_sweep(tmp_path, seed=2, metric="eval/tuned/rougeL", task={"values": ["classification",
                                                                                      "summarization"]})
    assert "task classification" in one_error_line(cli(*args))

def test_r2_an_unknown_built_in_model_in_a_sweep_stops_it_before_any_trial(tmp_path):
    args = _seed_sweep(tmp_path, seed=2, base_model={"values": ["tiny-test", "nosuch-model"]})
    line = one_error_line(cli(*args))
    assert "parameters.base_model.values[1]" in line and "nosuch-model: unknown model name" in line, line
    assert not (tmp_path/"sweep").exists()


# --- output folders: never a filesystem root, the home folder or a project's root ------------------------------

def test_r2_every_output_folder_refuses_the_home_folder_and_a_project_root(tmp_path, monkeypatch):
    "Checked on stand-ins (a home folder and a project under tmp_path): a regression must not write into / or ~."
    home, proj = tmp_path/"home", tmp_path/"proj"
    home.mkdir(); proj.mkdir(); (proj/"settings.ini").write_text("[finetune_kit]\n")
    monkeypatch.setenv("HOME", str(home))
    seeds = tmp_path/"seeds.jsonl"
    seeds.write_text("".join(json.dumps({"text": f"seed text number {i}", "label": "ab"[i % 2]}) + "\n" for i in range(6)))
    log = tmp_path/"requests.jsonl"
    log.write_text(json.dumps({"time": 1.0, "status": 200, "latency_s": 0.1, "model": "a", "adapter": "a", "arm": "-",
                               "completion_tokens": 3}) + "\n")
    commands = [["synth", "generate", seeds, "-d", "x", "--endpoint", "http://127.0.0.1:9", "--max-retries", "0",
                 "--no-progress", "-o"], ["monitor", log, "--out"], ["sweep", ROOT/"sweeps/tiny.yaml", "--dir"],
                ["tune", "bbc", "--budget", "45m", "--dir"]]
    for cmd in commands:
        for folder, says in ((home, "is the home folder"), (proj, "is a project root (it holds settings.ini)")):
            line = one_error_line(cli(*cmd, folder))
            assert str(folder) in line and says in line, (cmd, line)
    assert [p for p in home.iterdir() if not p.name.startswith(".")] == []  # (libraries' caches: ~/.cache, ~/.config)
    assert [p.name for p in proj.iterdir()] == ["settings.ini"]


# --- evaluation: no intervals said as such; an explicit --out is never redirected ---------------------------------

def _eval(out, **kw):
    from finetune_kit.evaluate import evaluate
    recs = rows(CLS/"test.jsonl")
    cfg = make_config({"base_model": "tiny-test", "report_to": "none", "review_samples": 6, **kw}, settings=False)
    return evaluate(cfg, CLS, out_dir=out, outputs={"base": ["sport"] * len(recs),
                                                     "tuned": [r["reference"] for r in recs]}, progress=False)

def test_r2_bootstrap_samples_0_says_no_intervals(tmp_path):
    res = _eval(tmp_path/"eval", bootstrap_samples=0)
    reason, report = res.metrics["verdict"]["reason"], res.report
    assert "nan" not in reason.lower() and "no intervals (bootstrap_samples 0)" in reason, reason
    assert "nan" not in report.lower() and "no intervals" in report

def test_r2_an_explicit_out_is_never_redirected_and_human_work_in_it_is_refused(tmp_path):
    ev = tmp_path/"eval"
    _eval(ev, bootstrap_samples=20)
    sheet = (ev/"review_sheet.csv").read_text().splitlines()
    (ev/"review_sheet.csv").write_text("\n".join([sheet[0]] + [l[:-1] + "1" if l.endswith(",") else l
                                                               for l in sheet[1:]]) + "\n")
    before = snapshot(ev)
    mine = tmp_path/"eval-2"; mine.mkdir(); (mine/"notes.txt").write_text("my own evaluation notes\n")
    line = one_error_line(cli("evaluate", "run", CLS, "--out", ev, "-p", "base_model", "tiny-test", "--no-progress"))
    assert str(ev) in line and "filled review sheet" in line and "--out" in line, line
    assert snapshot(ev) == before and (mine/"notes.txt").exists() and sorted(p.name for p in mine.iterdir()) == \
        ["notes.txt"]

def test_r2_a_redirected_evaluation_never_replaces_an_earlier_one(tmp_path):
    from finetune_kit.evaluate import free_eval_dir
    ev = tmp_path/"eval"
    _eval(ev, bootstrap_samples=20)
    sheet = (ev/"review_sheet.csv").read_text().splitlines()
    (ev/"review_sheet.csv").write_text("\n".join([sheet[0]] + [l[:-1] + "1" if l.endswith(",") else l
                                                               for l in sheet[1:]]) + "\n")
    _eval(tmp_path/"eval-2", bootstrap_samples=20)  # someone's evaluation, no review work in it
    before = snapshot(tmp_path/"eval-2")
    assert free_eval_dir(ev)[0] == tmp_path/"eval-3"
    res = _eval(ev, bootstrap_samples=20)
    assert res.out_dir == tmp_path/"eval-3" and snapshot(tmp_path/"eval-2") == before


# --- monitor ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("n", ["-1", "0"])
def test_r2_monitor_refuses_a_resample_count_below_1(tmp_path, n):
    log = tmp_path/"requests.jsonl"
    log.write_text(json.dumps({"time": 1.0, "status": 200, "latency_s": 0.1, "model": "a", "adapter": "a",
                               "arm": "-", "completion_tokens": 3}) + "\n")
    line = one_error_line(cli("monitor", log, "--resamples", n))
    assert "--resamples: must be at least 1" in line, line
    assert not (tmp_path/"monitor").exists()
