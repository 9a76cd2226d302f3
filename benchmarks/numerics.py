"""Numerics check: the kit's precision (bf16 where the hardware computes it) against fp32, once per PEFT method.

For each method, trains SmolLM2-135M-Instruct on the same BBC records with the same seed and batches for a few
steps, in fp32 (`dtype=float32`) and in the kit's default precision (`dtype=auto`), and compares the training-loss
curves: the relative gap of the mean loss over the steps, |mean_auto - mean_fp32| / mean_fp32, and the largest
per-step relative gap. As a yardstick for what "close" means, a second fp32 run differs from the first only in the
adapter's random initialisation: precision that moves the curve less than that is noise. LoRA dropout is off (so
runs see the same computation up to precision and initialisation), and the learning rate is each method's default.
Each run is a fresh process.

A method passes when its mean-loss gap is at most 0.05, or at most the gap between its two fp32 runs (prompt and
prefix tuning move more with their initialisation than with precision). It prints the largest gap as
`max_rel_loss_gap`, and last the line `methods_within_tolerance: <passing>/<methods>`.

With `--compile HOW` the kit's side trains with `torch_compile=HOW` (model or regions), so the compiled path is held to
the same tolerance against eager fp32.

    python benchmarks/numerics.py [--steps 8] [--methods lora,qlora,...] [--records 120] [--compile regions]
"""
import argparse, json, subprocess, sys, tempfile

def losses(method:str, dtype:str, steps:int, data:str, init_seed:int=0, compile_how:str="none") -> dict:
    "Training loss at each step for `method` in `dtype` on the prepared folder `data`."
    import torch
    from finetune_kit.settings import make_config
    from finetune_kit.data import load_splits
    from finetune_kit.models import load_model
    from finetune_kit.adapters import apply_peft
    from finetune_kit.methods import get_method
    from finetune_kit.train import FinetuneTrainer, training_args
    from transformers import TrainerCallback
    cfg = make_config({"base_model": "smollm2-135m-instruct", "peft_method": method, "dtype": dtype, "max_steps": steps,
                       "lora_dropout": 0.0, "logging_steps": 1, "report_to": "none", "warmup_ratio": 0.0,
                       "torch_compile": compile_how}, settings=False)
    torch.manual_seed(init_seed)  # the adapter's initialisation (the Trainer seeds the rest from cfg.seed)
    ds = load_splits(data)["train"]
    ds = ds.remove_columns([c for c in ds.column_names if c not in ("prompt", "completion")])
    model, tok = load_model(cfg, progress=False)
    model = apply_peft(model, cfg, total_steps=steps)
    seen = []
    class Log(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "loss" in logs: seen.append(float(logs["loss"]))
    with tempfile.TemporaryDirectory() as d:
        tr = FinetuneTrainer(model=model, args=training_args(cfg, d, save_strategy="no", disable_tqdm=True),
                             processing_class=tok, train_dataset=ds, callbacks=[Log()])
        tr.compact_loss = not get_method(method).prompt_learning  # as `train` sets it on a CPU
        from finetune_kit.compiling import compile_model
        tr.compile_info = compile_model(tr.model, compile_how, tr.args.device.type)  # as `train` does
        tr.train()
        bf16 = bool(tr.args.bf16)
    return {"losses": seen, "bf16": bf16, "dtype": str(model.dtype) if hasattr(model, "dtype") else dtype,
            "compile": tr.compile_info}

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--records", type=int, default=120)
    ap.add_argument("--methods", default="lora,qlora,dora,adalora,ia3,prompt_tuning,prefix_tuning,full")
    ap.add_argument("--one", nargs=3, metavar=("METHOD", "DTYPE", "INIT_SEED"))
    ap.add_argument("--data")
    ap.add_argument("--compile", default="none", choices=("none", "model", "regions"), help="torch_compile of the kit's side")
    a = ap.parse_args()
    if a.one:
        m, dt, seed = a.one
        print(json.dumps(losses(m, dt, a.steps, a.data, int(seed), a.compile if dt == "auto" else "none"))); return
    from finetune_kit.settings import make_config
    from finetune_kit.data import prepare_data
    from finetune_kit.models import detect_bf16, load_tokenizer
    print(f"precision here: {detect_bf16()[1]}")
    worst, passed, methods = 0.0, 0, a.methods.split(",")
    with tempfile.TemporaryDirectory() as data:
        prepare_data(make_config({"source": "bbc", "max_records": a.records}, settings=False), data,
                     tokenizer=load_tokenizer("smollm2-135m-instruct"))
        for method in methods:
            res = {}
            for name, dtype, seed in (("fp32", "float32", 0), ("kit", "auto", 0), ("fp32, other init", "float32", 1)):
                r = subprocess.run([sys.executable, __file__, "--one", method, dtype, str(seed), "--data", data,
                                    "--steps", str(a.steps), "--compile", a.compile], capture_output=True, text=True)
                if r.returncode: sys.exit(f"{method} {dtype} failed:\n{r.stderr[-3000:]}")
                out = json.loads(r.stdout.strip().splitlines()[-1])
                res[name] = out["losses"]
                if name == "kit" and a.compile != "none": print(f"{method:14s} kit's compile: {out['compile']}", flush=True)
            f = res["fp32"]
            mean = lambda xs: sum(xs) / len(xs)
            print(f"{method:14s} {'fp32':17s} {' '.join(f'{x:.3f}' for x in f)}", flush=True)
            gaps = {}
            for name in ("kit", "fp32, other init"):
                xs = res[name]
                gaps[name], step = abs(mean(xs) - mean(f)) / mean(f), max(abs(x - y) / y for x, y in zip(xs, f))
                print(f"{'':14s} {name:17s} {' '.join(f'{x:.3f}' for x in xs)}  mean-loss gap {gaps[name]:.3f}, "
                      f"largest step gap {step:.3f}", flush=True)
            ok = gaps["kit"] <= max(0.05, gaps["fp32, other init"])
            worst, passed = max(worst, gaps["kit"]), passed + ok
            print(f"{'':14s} {'within tolerance' if ok else 'OUTSIDE tolerance'}", flush=True)
    print(f"max_rel_loss_gap: {worst:.3f}")
    print(f"methods_within_tolerance: {passed}/{len(methods)}")

if __name__ == "__main__":
    main()
