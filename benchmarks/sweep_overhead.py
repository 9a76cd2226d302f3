"""Per-trial overhead of a sweep: kernel start, imports and model load, as a share of a short SmolLM2 trial.

A sweep trial is one papermill job of nbs/workbooks/experiment.ipynb. Besides the work (training,
evaluation) every trial pays for a fresh kernel, for importing torch / transformers / trl / peft and
the kit, and for loading the base model. This script runs one short trial exactly as the sweep
runner does (`finetune_kit.jobs.run_job`, papermill already imported, the prepared data already in
the cache, as for every trial after a sweep's first), and measures:

- kernel start: from papermill's notebook start to its first cell (from the executed notebook);
- imports: the kit's stage modules imported in a fresh interpreter;
- model load: SmolLM2-135M-Instruct loaded from the kit's cache, in that interpreter.

The trial loads the base model once (evaluation reuses the trained model). Prints the parts, the
trial's wall-clock time, and last `overhead_share: <(kernel + imports + load) / trial>`; target <= 0.10.

    python benchmarks/sweep_overhead.py                 # 10 training steps, 16 eval prompts
    python benchmarks/sweep_overhead.py --max-steps 30  # a longer trial: a smaller share
    python benchmarks/sweep_overhead.py --threads 1     # on a machine other jobs share
"""
import argparse, functools, json, os, subprocess, sys, tempfile, time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENT = ROOT/"nbs/workbooks/experiment.ipynb"
MODEL = "smollm2-135m-instruct"
print = functools.partial(print, flush=True)

_PROBE = """
import json, time
t0 = time.time()
import finetune_kit.config, finetune_kit.sweeps, finetune_kit.data, finetune_kit.models, finetune_kit.train, finetune_kit.evaluate
t1 = time.time()
from finetune_kit.settings import make_config
from finetune_kit.models import load_model
model, tok = load_model(make_config(dict(base_model=%r), settings=False), progress=False)
t2 = time.time()
print(json.dumps({"imports_s": t1 - t0, "model_load_s": t2 - t1}))
""" % MODEL

def _ts(s:str) -> float: return datetime.fromisoformat(s).timestamp()

def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--max-steps", type=int, default=10, help="training steps of the trial")
    ap.add_argument("--eval-samples", type=int, default=16, help="test prompts the trial evaluates (base and tuned)")
    ap.add_argument("--max-records", type=int, default=400, help="records prepared (once, cached)")
    ap.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS for the trial (on a shared machine, 1: oversubscribed threads spin)")
    a = ap.parse_args()
    if a.threads: os.environ["OMP_NUM_THREADS"] = str(a.threads)
    for k, v in {"WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}.items():
        os.environ.setdefault(k, v)
    os.chdir(ROOT)
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs; OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}")

    # imports and model load, in a fresh interpreter as a trial's kernel pays them
    r = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, cwd=ROOT)
    if r.returncode: sys.exit(f"probe failed: {r.stderr[-2000:]}")
    probe = json.loads(r.stdout.strip().splitlines()[-1])

    with tempfile.TemporaryDirectory() as d:
        params = dict(base_model=MODEL, max_records=a.max_records, max_steps=a.max_steps, max_eval_samples=a.eval_samples,
                      bootstrap_samples=200, review_samples=0, report_to="none", runs_dir=d, run_id="bench")
        from finetune_kit.settings import make_config
        from finetune_kit.data import prepare_cached
        t = time.time(); data_dir = prepare_cached(make_config(params)); prep = time.time() - t  # shared by trials: not part of one
        print(f"prepared data: {data_dir} ({prep:.1f} s, cached for every trial)")
        import papermill  # the sweep runner imports it once, before it forks trials
        from finetune_kit.jobs import run_job
        t0 = time.time(); out = run_job(EXPERIMENT, params, progress=False); wall = time.time() - t0
        nb = json.loads(Path(out).read_text())
        cells = [c for c in nb["cells"] if c["cell_type"] == "code"]
        kernel = _ts(cells[0]["metadata"]["papermill"]["start_time"]) - _ts(nb["metadata"]["papermill"]["start_time"])
        summary = json.loads((Path(d)/"bench"/"summary.json").read_text())
        cell_s = [(("".join(c["source"]).replace("#| slow\n", "").splitlines() or [""])[0][:48], c["metadata"]["papermill"]["duration"]) for c in cells]

    overhead = kernel + probe["imports_s"] + probe["model_load_s"]
    print(f"trial: {a.max_steps} steps of LoRA r=16 on {MODEL}, evaluation of {a.eval_samples} prompts (base and tuned)")
    for src, s in cell_s: print(f"  cell {s:7.1f} s  {src}")
    print(f"trial wall-clock     {wall:7.1f} s  (training {summary['train_seconds']:.1f} s, {summary['tokens_per_s']:.0f} tokens/s)")
    print(f"kernel start         {kernel:7.1f} s")
    print(f"imports              {probe['imports_s']:7.1f} s")
    print(f"model load           {probe['model_load_s']:7.1f} s")
    print(f"overhead             {overhead:7.1f} s")
    print(f"overhead_share: {overhead / wall:.3f}")

if __name__ == "__main__": main()
