"""GPU smoke test: QLoRA SFT on SmolLM2-135M-Instruct in bf16 on CUDA for a fixed number of steps.

Prints non-padding tokens/s, peak GPU memory and an MFU estimate (model FLOPs 6 * parameters per
token, against the GPU's dense bf16 peak). Without CUDA it stops with one line and exit status 2.

    python scripts/gpu_smoke.py [--steps 40] [--batch 16]
"""
import argparse, sys, tempfile, time

# Dense bf16 tensor-core peaks (FLOP/s) by device-name fragment; MFU is "n/a" for others.
PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "L4": 121e12, "A10G": 125e12, "A10": 125e12, "4090": 165e12}

def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--records", type=int, default=1200)
    a = ap.parse_args()
    import torch
    if not torch.cuda.is_available():
        print("gpu_smoke: no CUDA device visible (torch.cuda.is_available() is False): run it on a GPU machine")
        sys.exit(2)
    from finetune_kit.config import make_config
    from finetune_kit.train import train
    name = torch.cuda.get_device_name(0)
    with tempfile.TemporaryDirectory() as d:
        cfg = make_config({"base_model": "smollm2-135m-instruct", "peft_method": "qlora", "max_steps": a.steps,
                           "per_device_train_batch_size": a.batch, "max_records": a.records, "report_to": "none",
                           "runs_dir": d, "save_steps": 10**6, "logging_steps": 5}, settings=False)
        torch.cuda.reset_peak_memory_stats()
        res = train(cfg)
    s = res.summary
    assert s["steps"] == a.steps, s
    tps = s["tokens_per_s"]
    from transformers import AutoConfig, AutoModelForCausalLM
    from finetune_kit.models import resolve_model
    with torch.device("meta"):  # dense parameter count (4-bit storage packs two weights per byte)
        n_params = sum(p.numel() for p in AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(resolve_model("smollm2-135m-instruct"))).parameters())
    peak = next((v for k, v in PEAK_BF16.items() if k in name), None)
    mfu = 6 * n_params * tps / peak if peak else None
    print(f"device: {name}")
    print(f"dtype: bf16={torch.cuda.is_bf16_supported()}  steps: {s['steps']}  batch: {a.batch}")
    print(f"tokens_per_s: {tps:.0f}")
    print(f"peak_gpu_mb: {torch.cuda.max_memory_allocated() / 2**20:.0f}")
    print(f"mfu: {mfu:.4f}" if mfu is not None else "mfu: n/a (unknown GPU peak)")

if __name__ == "__main__":
    main()
