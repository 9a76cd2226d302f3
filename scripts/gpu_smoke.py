"""GPU smoke test: every part of the GPU path in one run, one printed line per check (PASS, FAIL or SKIP and why).

Checks: the device; QLoRA and LoRA in bf16 (tokens/s, peak GPU memory, MFU against the GPU's dense bf16 peak, with
model FLOPs 6 * parameters per token); that CUDA training takes TRL's own loss (its entropy metric is logged) and
fused AdamW; full fine-tuning in fp16 on a pretend-old GPU (bf16 detection off: fp32 master weights, fp16 autocast);
FlashAttention 2 with packing and Liger kernels when installed; vLLM evaluation when installed; 2-GPU DDP and FSDP2
through `accelerate launch` with the shipped configs when two GPUs are visible. Without CUDA it stops with one line
and exit status 2; a FAIL makes the exit status 1.

    python scripts/gpu_smoke.py [--steps 40] [--batch 16] [--only lora,ddp]
    python scripts/gpu_smoke.py --allow-cpu --model tiny-test --steps 2   # the script itself, on a CPU
"""
import argparse, contextlib, importlib.util, json, subprocess, sys, tempfile, time, traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Dense bf16 tensor-core peaks (FLOP/s) by device-name fragment; MFU is "n/a" for others.
PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "L4": 121e12, "A10G": 125e12, "A10": 125e12,
             "4090": 165e12}
CHECKS = ("device", "qlora", "lora", "trl_loss", "full_fp16", "flash_attn", "liger", "vllm", "ddp", "fsdp")

def params(a, runs, **kw):
    return {"base_model": a.model, "max_steps": a.steps, "per_device_train_batch_size": a.batch, "max_records": a.records,
            "max_chars": 300, "report_to": "none", "runs_dir": str(runs), "save_steps": 10**6, "logging_steps": 1, **kw}

def train_run(a, runs, **kw):
    "Train in this process; the summary, the manifest and the metric rows."
    import torch
    from finetune_kit.settings import make_config
    from finetune_kit.train import train
    if torch.cuda.is_available(): torch.cuda.reset_peak_memory_stats()
    res = train(make_config(params(a, runs, **kw), settings=False))
    rows = [json.loads(l) for l in (res.run_dir/"metrics.jsonl").read_text().splitlines() if l.strip()]
    return res.summary, json.loads((res.run_dir/"manifest.json").read_text()), rows

def dense_params(model) -> int:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM
    from finetune_kit.models import resolve_model
    with torch.device("meta"):  # dense count (4-bit storage packs two weights per byte)
        m = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(resolve_model(model)))
    return sum(p.numel() for p in m.parameters())

def speed(a, s) -> str:
    import torch
    name = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    peak = next((v for k, v in PEAK_BF16.items() if k in name), None)
    tps = s["tokens_per_s"]
    mfu = f"{6 * dense_params(a.model) * tps / peak:.4f}" if peak else "n/a"
    gpu = f"{torch.cuda.max_memory_allocated() / 2**20:.0f}" if torch.cuda.is_available() else "n/a"
    return f"{s['steps']} steps, loss {s['train_loss']:.4f}, {tps:.0f} tokens/s, peak_gpu_mb {gpu}, mfu {mfu}"

def check_device(a, runs):
    import torch
    if not torch.cuda.is_available(): return "SKIP", "no CUDA (--allow-cpu)"
    from finetune_kit.models import detect_bf16
    return "PASS", (f"{torch.cuda.get_device_name(0)}, sm {'.'.join(map(str, torch.cuda.get_device_capability()))}, "
                    f"{torch.cuda.device_count()} visible, {detect_bf16()[1]}, torch {torch.__version__}")

def check_qlora(a, runs):
    s, m, _ = train_run(a, runs, peft_method="qlora")
    assert s["steps"] == a.steps, s
    return "PASS", f"{speed(a, s)}, weights {m['precision']['weights']} ({m['precision']['reason']})"

def check_lora(a, runs):
    s, m, _ = train_run(a, runs, peft_method="lora")
    assert s["steps"] == a.steps, s
    return "PASS", f"{speed(a, s)}, weights {m['precision']['weights']}, mixed {m['precision']['mixed_precision']}"

def check_trl_loss(a, runs):
    import torch
    from finetune_kit.settings import make_config
    from finetune_kit.train import training_args, uses_compact_loss
    if not torch.cuda.is_available(): return "SKIP", "CUDA only"
    s, _, rows = train_run(a, runs, peft_method="lora", max_steps=min(a.steps, 5))
    optim = training_args(make_config(params(a, runs), settings=False), runs/"x").optim
    assert not uses_compact_loss("lora") and any("entropy" in r for r in rows), "TRL's entropy metric missing"
    assert "fused" in str(optim), optim
    return "PASS", f"TRL's loss (entropy logged), optim {optim}, loss {s['train_loss']:.4f}"

def check_full_fp16(a, runs):
    "Full fine-tuning as on a T4/V100: bf16 detection switched off in this process."
    import torch
    import finetune_kit.models as M, finetune_kit.train as T
    if not torch.cuda.is_available(): return "SKIP", "CUDA only (fp16 mixed precision needs a GPU)"
    old = M.detect_bf16, T.detect_bf16
    M.detect_bf16 = T.detect_bf16 = lambda cuda=None: (False, "pretend-old GPU (no bf16)")
    try: s, m, _ = train_run(a, runs, peft_method="full", max_steps=min(a.steps, 10))
    finally: M.detect_bf16, T.detect_bf16 = old
    p = m["precision"]
    assert (p["weights"], p["mixed_precision"]) == ("float32", "fp16"), p
    assert s["train_loss"] == s["train_loss"], "NaN loss"
    return "PASS", f"weights {p['weights']}, autocast {p['mixed_precision']}, loss {s['train_loss']:.4f}"

def check_flash_attn(a, runs):
    import torch
    from finetune_kit.models import device_settings, has_flash_attn
    if not (torch.cuda.is_available() and has_flash_attn()): return "SKIP", "flash-attn not installed (or no CUDA)"
    assert device_settings(packing=True).attn_implementation == "flash_attention_2"
    s, _, _ = train_run(a, runs, peft_method="lora", packing=True)
    return "PASS", f"packed, flash_attention_2: {speed(a, s)}"

def check_liger(a, runs):
    import torch
    if not (torch.cuda.is_available() and importlib.util.find_spec("liger_kernel")):
        return "SKIP", "liger-kernel not installed (or no CUDA)"
    s, _, _ = train_run(a, runs, peft_method="lora", use_liger_kernel=True)
    return "PASS", f"use_liger_kernel: {speed(a, s)}"

def check_vllm(a, runs):
    "A LoRA run evaluated by both backends on its test split: ms per record, how often answers agree, perplexity."
    import dataclasses
    from finetune_kit.config import load_config
    from finetune_kit.settings import make_config
    from finetune_kit.evaluate.run import generate_systems, load_split
    from finetune_kit.evaluate.vllm import vllm_missing
    if why := vllm_missing(): return "SKIP", why
    from finetune_kit.train import train
    res = train(make_config(params(a, runs, peft_method="lora", run_id="vllm_eval"), settings=False))
    cfg = load_config(res.run_dir/"config.json")
    recs, info = load_split(res.run_dir, "test", a.eval_records, cfg.seed)
    got = {}
    for b in ("vllm", "transformers"):  # the same records, adapter and greedy settings
        c = dataclasses.replace(cfg, eval=dataclasses.replace(cfg.eval, backend=b))
        got[b] = generate_systems(c, recs, res.adapter_dir, progress=False, labels=info.get("labels"))
    (vo, vp, _, vt), (to, tp, _, tt) = got["vllm"], got["transformers"]
    agree = {k: sum(x == y for x, y in zip(vo[k], to[k])) / len(recs) for k in ("base", "tuned")}
    return "PASS", (f"{len(recs)} records, base + LoRA on one engine: tuned {vt['tuned']['ms_per_record']:.1f} ms/record "
                    f"vs transformers {tt['tuned']['ms_per_record']:.1f}; answers agree base {agree['base']:.0%}, "
                    f"tuned {agree['tuned']:.0%}; tuned perplexity {vp.get('tuned', float('nan')):.3f} "
                    f"vs {tp.get('tuned', float('nan')):.3f}")

def launch(a, runs, config, name):
    import torch
    if torch.cuda.device_count() < 2: return "SKIP", f"{torch.cuda.device_count()} GPU(s) visible, 2 needed"
    p = params(a, runs, peft_method="lora", run_id=name)
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(ROOT/"configs/accelerate"/config),
           "--num_processes", "2", "-m", "finetune_kit.cli", "train", *[x for k, v in p.items() for x in ("-p", k, str(v))]]
    t0 = time.time()
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    if r.returncode != 0: return "FAIL", f"exit {r.returncode}: {r.stderr.strip().splitlines()[-1] if r.stderr.strip() else ''}"
    s = json.loads((runs/name/"summary.json").read_text())
    assert s["world_size"] == 2, s
    return "PASS", (f"{config}: world_size 2, {s['steps']} steps, loss {s['train_loss']:.4f}, "
                    f"{s['tokens_per_s']:.0f} tokens/s, {time.time() - t0:.0f} s with start-up")

def check_ddp(a, runs): return launch(a, runs, "ddp.yaml", "ddp")
def check_fsdp(a, runs): return launch(a, runs, "fsdp2.yaml", "fsdp")

def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--records", type=int, default=1200)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--eval-records", type=int, default=200, help="test records the vllm check evaluates")
    ap.add_argument("--only", default=",".join(CHECKS), help="comma-separated checks: " + ", ".join(CHECKS))
    ap.add_argument("--allow-cpu", action="store_true", help="run on a CPU anyway (to check the script itself)")
    a = ap.parse_args()
    import torch
    if not torch.cuda.is_available() and not a.allow_cpu:
        print("gpu_smoke: no CUDA device visible (torch.cuda.is_available() is False): run it on a GPU machine")
        sys.exit(2)
    failed = False
    for name in [c.strip() for c in a.only.split(",") if c.strip()]:
        t0 = time.time()
        with tempfile.TemporaryDirectory() as d, contextlib.redirect_stdout(sys.stderr):  # stdout: the check lines
            try: status, what = globals()[f"check_{name}"](a, Path(d))
            except Exception as e:
                status, what = "FAIL", f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
                traceback.print_exc(file=sys.stderr)
        failed |= status == "FAIL"
        print(f"{status} {name}: {what} [{time.time() - t0:.0f} s]", flush=True)
    sys.exit(1 if failed else 0)

if __name__ == "__main__":
    main()
