"""Peak memory of one training step on SmolLM2-135M: plain PEFT vs the kit's defaults.

Each configuration runs in its own process (peak RSS is per process): two optimizer steps at
batch 8 x 256 tokens of BBC articles whose label is the completion.

- plain: fp32, no gradient checkpointing, the model's own loss over full logits, AdamW (what a
  short script with transformers + peft does): full fine-tuning, LoRA r=16, QLoRA (NF4, double quant).
- kit: `finetune_kit.train.FinetuneTrainer` with `training_args(cfg)` (logits only where labels
  are; QLoRA turns gradient checkpointing on; the hardware's precision: bf16 where it computes bf16).

Last line: `qlora_peak_ratio: <kit QLoRA peak / plain full fine-tuning peak>` (target <= 0.5).

    python benchmarks/train_memory.py [--batch 8] [--length 256]
"""
import argparse, json, resource, subprocess, sys, time

def records(tok, n, length):
    "n prompt/completion records of about `length` tokens from BBC articles."
    from finetune_kit.data import load_bbc
    out = []
    for r in load_bbc()[:n]:
        ids = tok(r["text"], add_special_tokens=False)["input_ids"][:length - 40]
        out.append({"prompt": [{"role": "user", "content": "Topic of this article?\n" + tok.decode(ids)}],
                    "completion": [{"role": "assistant", "content": r["label"]}]})
    return out

def one(method, mode, batch, length, steps=2):
    import torch
    from datasets import Dataset
    from finetune_kit.settings import make_config
    from finetune_kit.models import load_model
    from finetune_kit.adapters import apply_peft
    torch.manual_seed(0)
    cfg = make_config({"base_model": "smollm2-135m-instruct", "peft_method": method, "max_steps": steps,
                       "per_device_train_batch_size": batch, "max_length": length, "report_to": "none",
                       **({"gradient_checkpointing": False, "dtype": "float32", "attn_implementation": "sdpa"}
                          if mode == "plain" else {})}, settings=False)
    model, tok = load_model(cfg, progress=False)
    model = apply_peft(model, cfg, total_steps=steps)
    ds = Dataset.from_list(records(tok, batch * steps, length))
    t0 = time.time()
    if mode == "kit":
        import tempfile
        from finetune_kit.train import FinetuneTrainer, training_args
        with tempfile.TemporaryDirectory() as d:
            args = training_args(cfg, d, save_strategy="no", logging_steps=100, disable_tqdm=True, train_sampling_strategy="sequential")
            tr = FinetuneTrainer(model=model, args=args, processing_class=tok, train_dataset=ds)
            tr.compact_loss = True
            tr.train()
    else:
        from transformers import DataCollatorForSeq2Seq
        prep = []
        for r in ds:
            p_ids = tok.apply_chat_template(r["prompt"], add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
            ids = tok.apply_chat_template(r["prompt"] + r["completion"], tokenize=True, return_dict=True)["input_ids"][:length]
            prep.append({"input_ids": ids, "labels": [-100] * len(p_ids) + ids[len(p_ids):]})
        coll = DataCollatorForSeq2Seq(tok, padding=True, label_pad_token_id=-100)
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
        model.train()
        for i in range(steps):
            b = coll([{k: prep[j][k] for k in ("input_ids", "labels")} for j in range(i * batch, (i + 1) * batch)])
            loss = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"], labels=b["labels"]).loss
            loss.backward(); opt.step(); opt.zero_grad()
    return {"method": method, "mode": mode, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "seconds_per_step": (time.time() - t0) / steps}

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--length", type=int, default=256)
    ap.add_argument("--one", nargs=2, metavar=("METHOD", "MODE"))
    a = ap.parse_args()
    if a.one:
        print(json.dumps(one(*a.one, a.batch, a.length)))
        return
    rows = []
    for method, mode in [("full", "plain"), ("lora", "plain"), ("qlora", "plain"), ("full", "kit"), ("lora", "kit"), ("qlora", "kit")]:
        r = subprocess.run([sys.executable, __file__, "--one", method, mode, "--batch", str(a.batch), "--length", str(a.length)],
                           capture_output=True, text=True)
        if r.returncode: sys.exit(f"{method}/{mode} failed:\n{r.stderr[-3000:]}")
        rows.append(json.loads(r.stdout.strip().splitlines()[-1]))
        print(f"{method:6s} {mode:6s} peak RSS {rows[-1]['peak_rss_mb']:8.0f} MB   {rows[-1]['seconds_per_step']:6.1f} s/step", flush=True)
    peak = {(r["method"], r["mode"]): r["peak_rss_mb"] for r in rows}
    print(f"batch {a.batch} x {a.length} tokens, SmolLM2-135M-Instruct, peak RSS of the whole process")
    print(f"qlora_peak_ratio: {peak[('qlora', 'kit')] / peak[('full', 'plain')]:.3f}")

if __name__ == "__main__":
    main()
