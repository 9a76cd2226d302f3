"""Scale-out through accelerate, proven on CPU: the shipped DDP and FSDP2 configs launch two processes (gloo) on the
tiny model and finish with the loss of one process that accumulates the same global batch; a rank that raises stops
the launch with its message instead of leaving the other rank waiting in a collective.

accelerate 1.x enables FSDP only on GPU-class backends (its `AcceleratorState` leaves a gloo run MULTI_CPU), so the
FSDP2 test lets it on gloo inside the test driver (`dist_train.py --fsdp-on-cpu`); the rest is the shipped path:
the shipped config, the kit's loading without a device_map, FSDP2's sharded parameters, the gathered adapter."""
import json, os, subprocess, sys, time
from pathlib import Path
import pytest
from helpers import ROOT, BIN, TRAIN

BASE = {**TRAIN, "dtype": "float32", "max_steps": 4, "save_steps": 100, "per_device_train_batch_size": 4}
SCRIPT = ROOT/"tests/dist_train.py"
CONFIGS = ROOT/"configs/accelerate"
pytestmark = pytest.mark.slow  # each launch starts two processes: about 40 s on two shared cores

def env():
    e = {k: v for k, v in os.environ.items() if not k.startswith(("ACCELERATE_", "FSDP_"))}
    return {**e, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}

def launch(tmp_path, name, config=None, port=29550, extra=(), timeout=300, **params):
    "Run dist_train.py under `accelerate launch --config_file configs/accelerate/<config>` (None: one plain process)."
    p = {**BASE, "runs_dir": str(tmp_path), "run_id": name, **params}
    (tmp_path/f"{name}.json").write_text(json.dumps(p))
    pre = ([str(BIN/"accelerate"), "launch", "--config_file", str(CONFIGS/config), "--num_processes", "2",
            "--main_process_port", str(port)] if config else [sys.executable])
    r = subprocess.run([*pre, str(SCRIPT), str(tmp_path/f"{name}.json"), str(tmp_path/f"{name}-probe"), *extra],
                       cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env())
    return r, tmp_path/name

def losses(run_dir):
    return [r["loss"] for r in map(json.loads, (run_dir/"metrics.jsonl").read_text().splitlines()) if "loss" in r]

def probes(tmp_path, name):
    return [json.loads(f.read_text()) for f in sorted((tmp_path/f"{name}-probe").glob("probe-*.json"))]

@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    "One process accumulating two micro-batches per step: the global batch of two processes."
    tmp = tmp_path_factory.mktemp("one")
    r, run = launch(tmp, "one", gradient_accumulation_steps=2)
    assert r.returncode == 0, r.stderr[-3000:]
    return run

@pytest.mark.parametrize("config,sharded", [("ddp.yaml", False), ("fsdp2.yaml", True)])
def test_two_cpu_processes_match_one(one_process, tmp_path, config, sharded):
    r, run = launch(tmp_path, "two", config, port=29551 + sharded, extra=("--fsdp-on-cpu",) if sharded else ())
    assert r.returncode == 0, r.stderr[-3000:]
    ps = probes(tmp_path, "two")
    assert [p["world_size"] for p in ps] == [2, 2] and all(p["sharded"] == sharded for p in ps), ps
    assert {p["distributed_type"] for p in ps} == {"DistributedType.FSDP" if sharded else "DistributedType.MULTI_CPU"}
    s = json.loads((run/"summary.json").read_text())
    assert s["world_size"] == 2 and s["steps"] == 4 and (run/"adapter/adapter_model.safetensors").exists()
    assert losses(run) == pytest.approx(losses(one_process), rel=1e-4)
    if sharded: assert "no device_map" in json.loads((run/"manifest.json").read_text())["precision"]["reason"]
    from safetensors.torch import load_file
    a, b = load_file(run/"adapter/adapter_model.safetensors"), load_file(one_process/"adapter/adapter_model.safetensors")
    assert a.keys() == b.keys() and all(a[k].shape == b[k].shape for k in a)  # whole tensors, gathered from the shards
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-4

def test_a_rank_that_raises_stops_the_launch(tmp_path):
    t0 = time.time()
    r, run = launch(tmp_path, "boom", "ddp.yaml", port=29555, extra=("--raise-on-rank", "1"), max_steps=50)
    done = time.time()
    assert r.returncode != 0
    raised = float((tmp_path/"boom-probe/raised_at").read_text())
    assert done - raised < 60, f"the launch took {done - raised:.0f} s to stop after rank 1 raised"
    assert "planted failure on rank 1" in r.stderr
    assert not (run/"summary.json").exists()
