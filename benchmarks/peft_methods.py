"""Every PEFT method on SmolLM2-135M-Instruct: trainable %, memory footprint, adapter size, seconds per step.

Each method runs in its own process (so peak RSS is its own): load the base with
`finetune_kit.models.load_model` (4-bit NF4 for qlora), `adapters.apply_peft` with the kit's defaults
(r=16, alpha=32, all linear layers; 20 virtual tokens), save the adapter to a temporary folder
and measure it, then time plain AdamW steps (forward, backward, step) at one fixed batch of
random token ids. The first step is a warm-up and is not timed.

    python benchmarks/peft_methods.py [--batch 4] [--length 64] [--steps 2] [--methods lora,qlora] [--csv PATH]

Prints a markdown table and writes it as CSV (default: benchmarks/peft_methods.csv).
"""
import argparse, csv, json, resource, subprocess, sys, tempfile, time
from pathlib import Path

COLUMNS = ("method", "trainable", "total", "trainable_pct", "footprint_mb", "adapter_mb", "s_per_step", "peak_rss_mb")

def one(method:str, batch:int, length:int, steps:int) -> dict:
    "Measure one method in this process."
    import torch
    from finetune_kit.settings import make_config
    from finetune_kit.methods import get_method
    from finetune_kit.models import load_model, model_report
    from finetune_kit.adapters import apply_peft, save_adapter
    torch.manual_seed(0)
    cfg = make_config(base_model="smollm2-135m-instruct", peft_method=method, settings=False)
    model, tok = load_model(cfg, progress=False)
    model = apply_peft(model, cfg, total_steps=steps + 1)
    with tempfile.TemporaryDirectory() as d: rep = model_report(model, save_adapter(model, d))
    ids = torch.randint(10, len(tok), (batch, length))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    spec = get_method(method)
    cb = spec.callback() if spec.callback else None  # AdaLoRA's rank allocation
    model.train()
    times = []
    for step in range(steps + 1):
        t0 = time.perf_counter()
        model(input_ids=ids, labels=ids).loss.backward()
        opt.step()
        if cb: cb.on_optimizer_step(None, argparse.Namespace(global_step=step), None, model=model)
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t0)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    return dict(method=method, **rep, s_per_step=sum(times[1:]) / steps, peak_rss_mb=rss)

def table(rows) -> str:
    "The rows as a markdown table."
    head = "| method | trainable | trainable % | footprint MB | adapter MB | s / step | peak RSS MB |\n|---|---:|---:|---:|---:|---:|---:|"
    fmt = lambda r: (f"| {r['method']} | {int(r['trainable']):,} | {float(r['trainable_pct']):.3f} | {float(r['footprint_mb']):.0f} | "
                     f"{float(r['adapter_mb']):.2f} | {float(r['s_per_step']):.2f} | {float(r['peak_rss_mb']):.0f} |")
    return "\n".join([head, *map(fmt, rows)])

def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--length", type=int, default=64)
    ap.add_argument("--steps", type=int, default=2, help="timed steps after one warm-up step")
    ap.add_argument("--methods", default=None, help="comma-separated (default: every registered method)")
    ap.add_argument("--csv", default=str(Path(__file__).with_suffix(".csv")))
    ap.add_argument("--one", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.one:
        print(json.dumps(one(a.one, a.batch, a.length, a.steps))); return
    from finetune_kit.methods import METHODS
    from finetune_kit.models import resolve_model
    resolve_model("smollm2-135m-instruct")  # convert once, outside the timed children
    rows = []
    for m in a.methods.split(",") if a.methods else METHODS:
        t0 = time.time()
        p = subprocess.run([sys.executable, __file__, "--one", m, "--batch", str(a.batch), "--length", str(a.length),
                            "--steps", str(a.steps)], capture_output=True, text=True)
        if p.returncode: sys.exit(f"{m} failed:\n{p.stderr[-3000:]}")
        rows.append(json.loads(p.stdout.strip().splitlines()[-1]))
        print(f"{m}: {time.time()-t0:.0f}s", file=sys.stderr)
    with open(a.csv, "w", newline="") as f:
        w = csv.DictWriter(f, COLUMNS, extrasaction="ignore"); w.writeheader(); w.writerows(rows)
    print(f"SmolLM2-135M-Instruct, batch {a.batch} x {a.length} tokens, {a.steps} timed AdamW steps after one warm-up\n")
    print(table(rows))

if __name__ == "__main__": main()
