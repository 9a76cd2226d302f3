"""Numerics check: the kit's precision (bf16 where the hardware computes it) against fp32, once per PEFT method.

For each method, trains SmolLM2-135M-Instruct on the same BBC records with the same seed and batches for a few
steps twice, in fp32 (`dtype=float32`) and in the kit's default precision (`dtype=auto`), and compares the
training-loss curves step by step: the relative gap |loss_auto - loss_fp32| / loss_fp32 at every step. LoRA dropout
is off in both (so both runs see the same computation up to precision), and the learning rate is each method's
default. Each method runs in a fresh process.

Last line: `max_rel_loss_gap: <the largest gap over every method and step>` (tolerance: 0.05).

    python benchmarks/numerics.py [--steps 8] [--methods lora,qlora,...] [--records 120]
"""
import argparse, json, subprocess, sys, tempfile

def losses(method:str, dtype:str, steps:int, data:str) -> list[float]:
    "Training loss at each step for `method` in `dtype` on the prepared folder `data`."
    import torch
    from finetune_kit.config import make_config
    from finetune_kit.data import load_splits
    from finetune_kit.models import load_model, apply_peft
    from finetune_kit.train import FinetuneTrainer, training_args
    from transformers import TrainerCallback
    cfg = make_config({"base_model": "smollm2-135m-instruct", "peft_method": method, "dtype": dtype, "max_steps": steps,
                       "lora_dropout": 0.0, "logging_steps": 1, "report_to": "none", "warmup_ratio": 0.0}, settings=False)
    torch.manual_seed(0)
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
        tr.train()
        bf16 = bool(tr.args.bf16)
    return {"losses": seen, "bf16": bf16, "dtype": str(model.dtype) if hasattr(model, "dtype") else dtype}

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--records", type=int, default=120)
    ap.add_argument("--methods", default="lora,qlora,dora,adalora,ia3,prompt_tuning,prefix_tuning,full")
    ap.add_argument("--one", nargs=2, metavar=("METHOD", "DTYPE"))
    ap.add_argument("--data")
    a = ap.parse_args()
    if a.one:
        print(json.dumps(losses(*a.one, a.steps, a.data))); return
    from finetune_kit.config import make_config
    from finetune_kit.data import prepare_data
    from finetune_kit.models import detect_bf16, load_tokenizer
    print(f"precision here: {detect_bf16()[1]}")
    worst = 0.0
    with tempfile.TemporaryDirectory() as data:
        prepare_data(make_config({"source": "bbc", "max_records": a.records}, settings=False), data,
                     tokenizer=load_tokenizer("smollm2-135m-instruct"))
        for method in a.methods.split(","):
            res = {}
            for dtype in ("float32", "auto"):
                r = subprocess.run([sys.executable, __file__, "--one", method, dtype, "--data", data, "--steps", str(a.steps)],
                                   capture_output=True, text=True)
                if r.returncode: sys.exit(f"{method} {dtype} failed:\n{r.stderr[-3000:]}")
                res[dtype] = json.loads(r.stdout.strip().splitlines()[-1])
            f, b = res["float32"]["losses"], res["auto"]["losses"]
            gaps = [abs(x - y) / y for x, y in zip(b, f)]
            worst = max(worst, *gaps)
            print(f"{method:14s} bf16 {res['auto']['bf16']!s:5s} fp32 {' '.join(f'{x:.3f}' for x in f)}", flush=True)
            print(f"{'':14s} kit        {' '.join(f'{x:.3f}' for x in b)}  max gap {max(gaps):.3f}", flush=True)
    print(f"max_rel_loss_gap: {worst:.3f}")

if __name__ == "__main__":
    main()
