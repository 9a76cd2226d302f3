"""Step time of a small training job alone, then beside one competing training job: what a busy machine costs.

Each job is the kit's training step (`finetune_kit.train.training_args` + `FinetuneTrainer`, LoRA r=16 on every
linear layer, the kit's precision and batch) on BBC records, SmolLM2-135M-Instruct by default (`--tiny`: the tiny
test model, seconds). The measured job times each optimizer step after its warm-up and reports the median; beside
means a second, identical job was started first and is in its training loop for the whole of the measured job.

Thread policies, each given to both jobs (two people running the same thing on one machine):
- default: what a user gets without the kit's care: no OMP_NUM_THREADS, so torch's own count (the physical cores
  `cpuinfo` reports, affinity and cgroup quota ignored) and the OpenMP library's wait policy (spin, then sleep);
- kit: the kit's policy as configured today (`threads` and `omp_wait_policy` at their config defaults), applied as
  `finetune-kit train` applies it: `threads.use_threads` before torch is imported, and, where nothing set the
  count, `train`'s refit between steps (`threads.ThreadFit`: the cores other processes leave free);
- kit-passive: the kit's threads with `omp_wait_policy passive` (idle OpenMP threads sleep at once);
- kit-advice: the competitor runs the kit's policy; the measured job takes the thread count the shared-cores
  warning names (`-p threads N`, N = usable cores less the competitor's threads, at least 1). Its ratio is
  against the kit's policy alone, as a user who follows the warning would see it.
`--competitor default` keeps the competing job at torch's defaults for every policy (someone else's job).

Prints a table (threads, wait policy, seconds per step alone and beside, ratio), a `contention_ratio_<policy>:`
line per policy, and last `contention_ratio: X`: beside / alone with the kit's policy (target <= 2.5; about 13
with default threads on a 2-core machine in issue 25). Run it on a quiet machine: it says the load average at
the start, and its figures mean nothing when other work shares the cores.

    python benchmarks/contention.py                          # SmolLM2, 4 timed steps after 1 warm-up, all policies
    python benchmarks/contention.py --policies default,kit-passive --steps 6
    python benchmarks/contention.py --tiny --keep-thread-env  # the plumbing in seconds, at OMP_NUM_THREADS as set
"""
import argparse, functools, json, os, signal, statistics, subprocess, sys, tempfile, time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
print = functools.partial(print, flush=True)
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OMP_WAIT_POLICY", "KMP_BLOCKTIME", "GOMP_SPINCOUNT",
               "FINETUNE_KIT_THREADS")
POLICIES = ("default", "kit", "kit-passive", "kit-advice")

# --- the worker: one training job -------------------------------------------------------------------------------

def worker(a):
    "Train `a.steps + a.warmup` steps (or until killed, with `--forever`); print the timed steps' seconds as JSON."
    plan = None
    if a.kit:  # the kit's policy, applied as the command line applies it: before torch (and OpenMP) is loaded
        from finetune_kit.threads import use_threads
        plan = use_threads(a.threads, a.wait, warn=False)
    import torch
    from transformers import TrainerCallback
    from finetune_kit.settings import make_config
    from finetune_kit.data import load_splits
    from finetune_kit.models import load_model
    from finetune_kit.adapters import apply_peft
    from finetune_kit.train import FinetuneTrainer, _follow_load, training_args
    cfg = make_config({"base_model": a.model, "peft_method": "lora", "lora_r": 16, "report_to": "none",
                       "max_steps": 10**6 if a.forever else a.steps + a.warmup}, settings=False)
    ds = load_splits(a.data)["train"]
    ds = ds.remove_columns([c for c in ds.column_names if c not in ("prompt", "completion")])

    class Clock(TrainerCallback):
        "Each step's seconds; the ready file once the first step is done."
        def __init__(self): self.times, self.t = [], None
        def on_step_begin(self, args, state, control, **kw): self.t = time.perf_counter()
        def on_step_end(self, args, state, control, **kw):
            self.times.append(time.perf_counter() - self.t)
            if a.ready and len(self.times) == 1: Path(a.ready).write_text("ready\n")

    clock = Clock()
    model, tok = load_model(cfg, progress=False)
    model = apply_peft(model, cfg)
    with tempfile.TemporaryDirectory() as d:
        trainer = FinetuneTrainer(model=model, args=training_args(cfg, d, save_strategy="no", disable_tqdm=True,
                                                                  logging_steps=10**6),
                                  processing_class=tok, train_dataset=ds, callbacks=[clock, *_follow_load(plan)])
        trainer.train()
    print(json.dumps({"step_s": clock.times[a.warmup:], "threads": torch.get_num_threads(),
                      "wait": os.environ.get("OMP_WAIT_POLICY", "runtime").lower(), "bf16": bool(trainer.args.bf16),
                      "changes": (plan or {}).get("changes", [])}))

# --- the driver -------------------------------------------------------------------------------------------------

def clean_env(keep:bool) -> dict:
    "This environment without the thread variables (unless `keep`): each policy starts from what a user would have."
    env = dict(os.environ)
    for k, v in {"WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                 "TOKENIZERS_PARALLELISM": "false"}.items(): env.setdefault(k, v)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    if not keep:
        for k in THREAD_VARS: env.pop(k, None)
    return env

def worker_args(a, data, job:dict, steps:int, warmup:int) -> list[str]:
    "The command line of a worker running `job` (`{'kit': bool, 'threads': int|None, 'wait': str}`)."
    args = [sys.executable, __file__, "--worker", "--data", data, "--model", a.model, "--steps", str(steps),
            "--warmup", str(warmup), "--wait", job["wait"]]
    if job["kit"]: args.append("--kit")
    if job["threads"] is not None: args += ["--threads", str(job["threads"])]
    return args

def run_job(a, data, job, env) -> dict:
    "Run one measured job to its end; its result."
    r = subprocess.run(worker_args(a, data, job, a.steps, a.warmup), env=env, capture_output=True, text=True)
    if r.returncode: sys.exit(f"a training job failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])

def beside(a, data, job, rival, env) -> dict:
    "Run `job` while `rival` trains: the rival starts first and is stopped when the measured job ends."
    with tempfile.TemporaryDirectory() as d:
        ready, log = Path(d)/"ready", open(Path(d)/"rival.log", "w")
        p = subprocess.Popen(worker_args(a, data, rival, 1, 0) + ["--forever", "--ready", str(ready)], env=env,
                             stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            t0 = time.time()
            while not ready.exists():
                if p.poll() is not None: sys.exit(f"the competing job ended early:\n{(Path(d)/'rival.log').read_text()[-3000:]}")
                if time.time() - t0 > a.ready_timeout: sys.exit("the competing job did not reach its first step in time")
                time.sleep(0.5)
            return run_job(a, data, job, env)
        finally:
            try: os.killpg(p.pid, signal.SIGTERM)  # the competitor's process group: it and anything it started
            except ProcessLookupError: pass
            try: p.wait(30)
            except subprocess.TimeoutExpired: os.killpg(p.pid, signal.SIGKILL); p.wait()
            log.close()

def torch_default_threads(env) -> int:
    r = subprocess.run([sys.executable, "-c", "import torch; print(torch.get_num_threads())"], env=env,
                       capture_output=True, text=True, check=True)
    return int(r.stdout.strip())

def prepare(a, data):
    from finetune_kit.settings import make_config
    from finetune_kit.data import prepare_data
    from finetune_kit.models import load_tokenizer
    cfg = make_config({"source": "bbc", "max_records": a.records, "base_model": a.model,
                       **({"max_chars": a.max_chars} if a.max_chars else {})}, settings=False)
    info = prepare_data(cfg, data, tokenizer=load_tokenizer(a.model))
    return info["counts"]["splits"]

def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true", help="the tiny test model, few short records, 2 steps: seconds")
    ap.add_argument("--steps", type=int, help="timed steps per measured job (default 4; --tiny 2)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    ap.add_argument("--records", type=int, help="BBC records prepared (default 200; --tiny 60)")
    ap.add_argument("--max-chars", type=int, help="cut each article to this many characters (default: whole; --tiny 120). "
                    "In fp32 (a CPU without bf16) two SmolLM2 jobs on whole articles can pass 24 GiB together: 800 fits")
    ap.add_argument("--policies", default=",".join(POLICIES), help=f"comma-separated, of {', '.join(POLICIES)}")
    ap.add_argument("--competitor", choices=("same", "default"), default="same",
                    help="the competing job's policy: the measured job's own, or torch's defaults")
    ap.add_argument("--keep-thread-env", action="store_true",
                    help="keep OMP_NUM_THREADS and the other thread variables of this shell for every job (a smoke "
                         "test on a busy machine: the figures then compare nothing)")
    ap.add_argument("--ready-timeout", type=float, default=600, help="seconds the competing job may take to its first step")
    ap.add_argument("--json", help="also write the results here")
    # the worker's own arguments
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--kit", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--threads", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--wait", default="runtime", help=argparse.SUPPRESS)
    ap.add_argument("--forever", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--ready", help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)
    ap.add_argument("--model", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    a.model = a.model or ("tiny-test" if a.tiny else "smollm2-135m-instruct")
    a.steps = a.steps or (2 if a.tiny else 4)
    a.records, a.max_chars = a.records or (60 if a.tiny else 200), a.max_chars or (120 if a.tiny else None)
    if a.worker: return worker(a)
    policies = [p.strip() for p in a.policies.split(",") if p.strip()]
    if bad := [p for p in policies if p not in POLICIES]: sys.exit(f"--policies: unknown {', '.join(bad)}")

    from finetune_kit.settings import make_config
    from finetune_kit.threads import choose_threads, load_average, usable_cores
    from finetune_kit.runs import capture_env
    env = clean_env(a.keep_thread_env)
    m = make_config(settings=False).model  # the kit's defaults
    cores, torch_default = usable_cores(), torch_default_threads(env)
    kit_threads = choose_threads(m.threads, env, cores)[0]
    load0 = load_average()
    print(f"machine: {capture_env()['cpu']}, {cores} usable cores, torch's default {torch_default} threads; "
          f"load average {load0:.2f} at the start" + ("" if (load0 or 0) < 0.5 else " (NOT QUIET: the figures mean little)"))
    if a.keep_thread_env: print(f"thread variables kept: OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}")
    print(f"model {a.model}; kit defaults: threads {m.threads} -> {kit_threads}, omp_wait_policy {m.omp_wait_policy}; "
          f"competitor: {a.competitor}")
    jobs = {"default": {"kit": False, "threads": None, "wait": "runtime"},
            "kit": {"kit": True, "threads": m.threads, "wait": m.omp_wait_policy},
            "kit-passive": {"kit": True, "threads": m.threads, "wait": "passive"},
            "kit-advice": {"kit": True, "threads": max(1, cores - kit_threads), "wait": m.omp_wait_policy}}

    res, t_start = {}, time.time()
    with tempfile.TemporaryDirectory() as data:
        print(f"data: {prepare(a, data)}")
        def measure(name):
            if name in res: return res[name]
            job = jobs[name]
            rival = jobs["default"] if a.competitor == "default" else jobs["kit"] if name == "kit-advice" else job
            if name != "kit-advice": alone = run_job(a, data, job, env)
            elif "kit" in res: alone = res["kit"]["alone"]
            else: alone = run_job(a, data, jobs["kit"], env)  # the kit's policy alone: what the advice is compared with
            near = beside(a, data, job, rival, env)
            res[name] = {"alone": alone, "beside": near, "alone_s": statistics.median(alone["step_s"]),
                         "beside_s": statistics.median(near["step_s"])}
            res[name]["ratio"] = res[name]["beside_s"] / res[name]["alone_s"]
            r = res[name]
            print(f"{name:12s} threads {near['threads']:>2} (alone {alone['threads']}), wait {near['wait']:8s} "
                  f"alone {r['alone_s']:7.3f} s/step  beside {r['beside_s']:7.3f} s/step  ratio {r['ratio']:6.2f}  "
                  f"(bf16 {near['bf16']}; steps beside: {', '.join(f'{x:.2f}' for x in near['step_s'])}"
                  + (f"; refits beside: {', '.join(str(c['threads']) for c in near['changes'])}" if near["changes"] else "")
                  + ")")
            return r
        for name in policies: measure(name)
    print(f"{time.time() - t_start:.0f} s in all; load average {load_average():.2f} at the end")
    if a.json: Path(a.json).write_text(json.dumps({"policies": res, "cores": cores, "torch_default_threads": torch_default,
                                                    "model": a.model, "competitor": a.competitor}, indent=1) + "\n")
    for name in policies:
        if name != "kit": print(f"contention_ratio_{name.replace('-', '_')}: {res[name]['ratio']:.2f}")
    if "kit" in res: print(f"contention_ratio: {res['kit']['ratio']:.2f}")

if __name__ == "__main__":
    main()
