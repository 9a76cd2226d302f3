"""W&B tracking follows the training run: evaluation logs to the same W&B run, in the same mode, and the sweep metric
reaches a `wandb agent`'s run. Checked against a loopback stand-in for the W&B server that records what the client
sends, with credentials present and WANDB_MODE unset (a logged-in worker)."""
import json, os, subprocess, sys
import pytest
from helpers import CLS, ROOT
from wandb_standin import WandbStandin

pytestmark = pytest.mark.slow  # each test trains in a Python process that talks to a W&B stand-in server

# One training run (tiny model, report_to=wandb) and its evaluation (precomputed answers), as the experiment workbook
# runs them: one process, the training run's config.
SCRIPT = """
import json, sys
sys.path.insert(0, "tests")
from helpers import TRAIN_SMALL, tiny_config
from finetune_kit.train import train
from finetune_kit.evaluate import evaluate
from finetune_kit.files import read_jsonl
runs, data = sys.argv[1], sys.argv[2]
cfg = tiny_config(TRAIN_SMALL, max_steps=2, save_steps=100, report_to="wandb", project="kit-project", runs_dir=runs,
                  run_id="kit-run")
res = train(cfg)
gold = [r["label"] for r in read_jsonl(f"{data}/test.jsonl")]
ev = evaluate(cfg, data, out_dir=res.run_dir/"eval", outputs={"base": ["sport"]*len(gold), "tuned": gold},
              progress=False)
print("RESULT", json.dumps({"tracking": ev.metrics["tracking"], "macro_f1": ev.metrics["tuned"]["macro_f1"]}))
"""

def run_tracked(tmp_path, wb, **env_extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}  # no WANDB_MODE: a logged-in worker
    env.update(WANDB_API_KEY="k"*40, WANDB_BASE_URL=wb.url, WANDB_SILENT="true", HOME=str(tmp_path), **env_extra)
    r = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path/"runs"), str(CLS)], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.split("RESULT ", 1)[1])

@pytest.mark.parametrize("agent", [False, True], ids=["logged-in worker", "wandb agent"])
def test_eval_metrics_reach_the_training_runs_wandb_run(tmp_path, agent):
    with WandbStandin() as wb:
        extra = dict(WANDB_SWEEP_ID="sweep-7", WANDB_RUN_ID="agent-run-7", WANDB_PROJECT="sweep-project") if agent else {}
        out = run_tracked(tmp_path, wb, **extra)
    run_id = "agent-run-7" if agent else "kit-run"
    assert out["tracking"] == "wandb" and out["macro_f1"] == 1.0
    assert set(wb.history) == {run_id}, f"W&B runs that got history: {sorted(wb.history)}"  # one run, nothing else
    rows = wb.rows(run_id)
    assert any("train/loss" in r for r in rows), "training logged to the run"
    assert any(r.get("eval/tuned/macro_f1") == 1.0 for r in rows), "the evaluation reached the same run, online"
    assert wb.summary[run_id]["eval/tuned/macro_f1"] == 1.0  # the value a sweep's metric reads
    assert {b["name"] for b in wb.buckets} == {run_id}
    if agent: assert {b.get("sweep") for b in wb.buckets} >= {"sweep-7"}
    assert not list((tmp_path/"runs/kit-run/wandb").glob("offline-run-*")), "nothing left offline to sync by hand"
