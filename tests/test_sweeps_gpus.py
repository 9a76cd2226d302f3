"""Sweep trials that take several GPUs each (`gpus_per_trial`): disjoint GPU sets, GPUs // k trials at once, and a
one-line error when a trial needs more GPUs than are visible. GPUs are pretended through CUDA_VISIBLE_DEVICES; the
stand-in workbook never touches CUDA, so this runs on a CPU machine."""
import json
from pathlib import Path
import pytest
from typer.testing import CliRunner
from sweep_workbook import fake_workbook, sweep_file
from finetune_kit.sweeps import SweepError, gpu_groups, gpu_ids, sweep, worker_env

def test_disjoint_gpu_sets_per_worker(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3,4")
    gpus = gpu_ids()
    assert gpu_groups(gpus, 2) == [["0", "1"], ["2", "3"]] and gpu_groups(gpus, 5) == [gpus]
    assert [worker_env(i, 2, gpus, 2)["CUDA_VISIBLE_DEVICES"] for i in range(2)] == ["0,1", "2,3"]
    assert [worker_env(i, 5, gpus)["CUDA_VISIBLE_DEVICES"] for i in range(5)] == gpus  # one each, as before
    with pytest.raises(SweepError, match="gpus_per_trial: 6 GPUs per trial, but the GPUs visible here are 5"):
        gpu_groups(gpus, 6)
    with pytest.raises(SweepError, match="gpus_per_trial: must be at least 1"): gpu_groups(gpus, 0)

def test_cli_refuses_more_gpus_per_trial_than_visible_in_one_line(tmp_path, monkeypatch):
    from finetune_kit.cli import app
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    f = sweep_file(tmp_path, fake_workbook(tmp_path), {"name": "big", "method": "grid",
                                                      "parameters": {"lora_r": {"values": [4]}}})
    r = CliRunner().invoke(app, ["sweep", str(f), "--gpus-per-trial", "4", "--dir", str(tmp_path/"sw")])
    assert r.exit_code == 2, r.output
    assert "gpus_per_trial: 4 GPUs per trial, but the GPUs visible here are 2 (0,1)" in r.output
    assert len(r.output.strip().splitlines()) == 1 and not (tmp_path/"sw").exists()

@pytest.mark.slow  # each trial is a notebook job: a Jupyter kernel
def test_trials_run_on_disjoint_gpu_pairs(tmp_path, monkeypatch, capsys):
    "Five pretend GPUs, two per trial: two trials at once (not the four asked for), on 0,1 and 2,3, never sharing one."
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3,4")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    # each trial waits until a second one runs (or none is left to come): trials started together overlap in time
    f = sweep_file(tmp_path, fake_workbook(tmp_path, seconds=1.0, meet=2, trials=4), {"name": "pairs", "method": "grid",
                   "parameters": {"lora_r": {"values": [4, 8]}, "learning_rate": {"values": [1e-3, 2e-3]}}})
    res = sweep(f, parallel=4, gpus_per_trial=2, sweep_dir=tmp_path/"sw", poll=0.2)
    assert "5 GPUs make 2 sets of 2: 2 trials at once, not 4" in capsys.readouterr().out
    t = res.table
    assert list(t["state"]) == ["complete"] * 4
    runs = [json.loads((tmp_path/"sw"/"trials"/rid/"summary.json").read_text()) for rid in t["run_id"]]
    assert {r["gpus"] for r in runs} == {"0,1", "2,3"}
    at_once = max(sum(b["start"] <= a["start"] < b["end"] for b in runs) for a in runs)  # running when one started
    assert at_once == 2, runs  # trials did run concurrently, never more than there are GPU pairs
    for i, a in enumerate(runs):  # trials that overlapped in time had different GPU sets
        overlapping = [b for b in runs[i + 1:] if a["start"] < b["end"] and b["start"] < a["end"]]
        assert all(b["gpus"] != a["gpus"] for b in overlapping) and len(overlapping) <= 1
    assert (t["device_hours"] >= 2 * t["seconds"] / 3600 * 0.99).all()  # two GPUs' worth of hours per trial
