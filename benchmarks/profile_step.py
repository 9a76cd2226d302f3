"""Where a training step's time goes: `finetune_kit.speed.profile_steps` on SmolLM2-135M-Instruct, LoRA r=16 (all
linear layers), the kit's defaults (bf16 where the hardware computes it), BBC records cut to 300 characters as in the
quick start, batch 8. Prints self CPU time per step by group (large matmuls, LoRA products, attention, elementwise,
optimizer, compiled, other), then the top ops, and the load average (the figures mean little on a shared machine).

    python benchmarks/profile_step.py [--steps 3] [--warmup 1] [--records 64] [--compile none|model|regions] [--top 20]
"""
import argparse, os

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--records", type=int, default=64)
    ap.add_argument("--compile", default="none", choices=("none", "model", "regions"))
    ap.add_argument("--top", type=int, default=20)
    ap.add_argument("--csv", help="write the whole op table here")
    a = ap.parse_args()
    import pandas as pd
    from finetune_kit.settings import make_config
    from finetune_kit.speed import profile_steps
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    cfg = make_config({"base_model": "smollm2-135m-instruct", "source": "bbc", "max_records": a.records, "max_chars": 300,
                       "report_to": "none", "torch_compile": a.compile}, settings=False)
    ops = profile_steps(cfg, steps=a.steps, warmup=a.warmup)
    if a.csv: ops.to_csv(a.csv, index=False)
    pd.set_option("display.width", 200); pd.set_option("display.max_colwidth", 60)
    groups = ops.groupby("group").agg(ms_per_step=("ms_per_step", "sum"), share=("share", "sum")).sort_values("ms_per_step", ascending=False)
    print(groups.round(3).to_string())
    print(ops.head(a.top).round(3).to_string())
    print(f"load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    c = ops.attrs["compiled"]
    print(f"torch_compile asked {c['asked']}, used {c['used']}" + (f" ({c['reason']})" if c["reason"] else ""))
    print(f"step_seconds: {ops.attrs['step_seconds']:.2f} (torch_compile {c['used']}, profiler on)")

if __name__ == "__main__":
    main()
