"""Training throughput on SmolLM2-135M-Instruct, LoRA r=16 (all linear layers), BBC topic records.

Measures non-padding tokens per second of
- kit: the kit's default training (`finetune_kit.train.training_args` + `FinetuneTrainer`), and
- trl: TRL's `SFTTrainer` with its default `SFTConfig` (the same LoRA via `peft_config`), with
  `use_cpu=True` on a machine without CUDA (TRL demands it there). TRL's default `bf16=True` is
  measured as well, but the ratio is taken against the faster of TRL's runs, bf16 on or off,
so the figure is not inflated by a precision this CPU runs slowly,
on the same prepared records, same machine, same run. Steps after the warm-up are timed.

It also prints each side's useful FLOP/s (`_bench.train_flops`: forward and input-gradient products of the frozen
weights, the output layer only where a label is) and the kit's share of the device's best matrix-product peak
(`_bench.device_peak`, fp32 or bf16), as `peak_share`. Diagnostic sides change one kit default at a time:
`kit-fp32` (dtype float32), `kit-sdpa` (SDPA attention), `kit-full-logits` (TRL's loss over every position),
`kit-random` (random batches instead of length-grouped), `kit-dropout` (LoRA dropout 0.05), and with `--compile HOW`
`kit-compile` (the kit's defaults with `torch_compile=HOW`: model or regions; its compile happens in the warm-up steps,
printed apart as the first steps' seconds beside the eager side's).

Last line: `speedup_vs_trl: <kit tokens/s / the faster TRL default run's tokens/s>` (target >= 2.0).

    python benchmarks/train_throughput.py [--steps 12] [--warmup 2] [--records 200] [--sides kit,trl,trl-bf16,...] [--compile regions]
"""
import argparse, json, os, subprocess, sys, tempfile, time
from _bench import device_peak, linear_params, train_flops

KIT_VARIANTS = {"kit": {}, "kit-fp32": {"dtype": "float32"}, "kit-sdpa": {"attn_implementation": "sdpa"},
                "kit-dropout": {"lora_dropout": 0.05}, "kit-full-logits": {}, "kit-random": {}}

def measure(side, steps, warmup, records, data_dir, compile_how="none"):
    import torch
    from transformers import TrainerCallback
    from finetune_kit.settings import make_config
    from finetune_kit.data import load_splits
    from finetune_kit.models import load_model
    from finetune_kit.adapters import apply_peft
    cfg = make_config({"base_model": "smollm2-135m-instruct", "peft_method": "lora", "lora_r": 16, "report_to": "none",
                       "max_steps": steps + warmup, "source": "bbc", "max_records": records,
                       **KIT_VARIANTS.get(side, {}), **({"torch_compile": compile_how} if side == "kit-compile" else {})},
                      settings=False)
    train_ds = load_splits(data_dir)["train"]
    train_ds = train_ds.remove_columns([c for c in train_ds.column_names if c not in ("prompt", "completion")])

    class Clock(TrainerCallback):
        "Time and count non-padding tokens of the steps after the warm-up."
        def __init__(self): self.t, self.tok, self.t0 = None, None, None
        def on_step_begin(self, args, state, control, **kw):
            if state.global_step == 0: self.t0 = time.perf_counter()
            if state.global_step == warmup:
                self.t, self.tok = time.perf_counter(), trainer._total_train_tokens
                self.warmup_seconds = self.t - self.t0  # the warm-up steps: a compiled side compiles here
        def on_train_end(self, args, state, control, **kw):
            self.seconds, self.tokens = time.perf_counter() - self.t, trainer._total_train_tokens - self.tok

    clock = Clock()
    with tempfile.TemporaryDirectory() as d:
        if side.startswith("kit"):
            from finetune_kit.train import FinetuneTrainer, training_args
            model, tok = load_model(cfg, progress=False)
            model = apply_peft(model, cfg)
            over = {"train_sampling_strategy": "random"} if side == "kit-random" else {}
            trainer = FinetuneTrainer(model=model, args=training_args(cfg, d, save_strategy="no", disable_tqdm=True, **over),
                                      processing_class=tok, train_dataset=train_ds, callbacks=[clock])
            trainer.compact_loss = side != "kit-full-logits"
            from finetune_kit.compiling import compile_model
            trainer.compile_info = compile_model(trainer.model, cfg.train.torch_compile, trainer.args.device.type)
        else:
            from peft import LoraConfig
            from trl import SFTConfig, SFTTrainer
            from finetune_kit.models import resolve_model, load_tokenizer
            path = resolve_model("smollm2-135m-instruct", progress=False)
            bf16 = side == "trl-bf16"
            args = SFTConfig(d, max_steps=steps + warmup, use_cpu=not torch.cuda.is_available(), bf16=bf16 if not torch.cuda.is_available() else None,
                             report_to="none", save_strategy="no", disable_tqdm=True, model_init_kwargs={"dtype": torch.float32})
            trainer = SFTTrainer(model=path, args=args, train_dataset=train_ds, processing_class=load_tokenizer("smollm2-135m-instruct"),
                                 peft_config=LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear", task_type="CAUSAL_LM"),
                                 callbacks=[clock])
        trainer.train()
        blocks, head = linear_params(trainer.model)
    return {"side": side, "blocks": blocks, "head": head, "tokens": clock.tokens, "seconds": clock.seconds, "tokens_per_s": clock.tokens / clock.seconds,
            "batch": trainer.args.per_device_train_batch_size, "gradient_checkpointing": trainer.args.activation_checkpointing,
            "bf16": bool(trainer.args.bf16), "warmup_seconds": clock.warmup_seconds,
            "compile": getattr(trainer, "compile_info", {"used": "none"})}

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--records", type=int, default=200)
    ap.add_argument("--one", metavar="SIDE")
    ap.add_argument("--data")
    ap.add_argument("--compile", default="none", choices=("none", "model", "regions"),
                    help="also measure the kit's defaults with torch_compile=COMPILE (side kit-compile)")
    ap.add_argument("--sides", default="kit,trl,trl-bf16",
                    help=f"comma-separated: {', '.join(KIT_VARIANTS)}, trl (fp32), trl-bf16 (TRL's strict default)")
    a = ap.parse_args()
    if a.compile != "none" and "kit-compile" not in a.sides: a.sides += ",kit-compile"
    if a.one:
        print(json.dumps(measure(a.one, a.steps, a.warmup, a.records, a.data, a.compile)))
        return
    from finetune_kit.settings import make_config
    from finetune_kit.data import prepare_data
    from finetune_kit.data import load_splits, token_lengths
    from finetune_kit.models import load_tokenizer
    with tempfile.TemporaryDirectory() as data:
        cfg = make_config({"source": "bbc", "max_records": a.records, "base_model": "smollm2-135m-instruct"}, settings=False)
        tok = load_tokenizer("smollm2-135m-instruct")
        info = prepare_data(cfg, data, tokenizer=tok)
        p_lens, t_lens = token_lengths(list(load_splits(data)["train"]), tok)
        loss_share = 1 - sum(p_lens) / sum(t_lens)  # the answer's share of each record's tokens, over the split
        print(f"BBC records: {info['counts']['splits'] if 'splits' in info.get('counts', {}) else info.get('counts')}")
        res = {}
        print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
        for side in a.sides.split(","):
            r = subprocess.run([sys.executable, __file__, "--one", side, "--data", data, "--steps", str(a.steps),
                                "--warmup", str(a.warmup), "--records", str(a.records), "--compile", a.compile],
                               capture_output=True, text=True)
            if r.returncode: sys.exit(f"{side} failed:\n{r.stderr[-3000:]}")
            res[side] = json.loads(r.stdout.strip().splitlines()[-1])
            x = res[side]
            x["gflops"] = train_flops(x["blocks"], x["head"], x["tokens"], x["tokens"] * loss_share) / x["seconds"] / 1e9
            print(f"{side:15s} {x['tokens_per_s']:7.1f} non-padding tokens/s, {x['gflops']:6.1f} useful GFLOP/s  "
                  f"({x['tokens']} tokens in {x['seconds']:.1f}s; batch {x['batch']}, gradient checkpointing "
                  f"{x['gradient_checkpointing']}, bf16 {x['bf16']}; {a.warmup} warm-up steps {x['warmup_seconds']:.1f}s"
              + (f"; compile {x['compile']}" if side == "kit-compile" else "") + ")", flush=True)
    import torch
    print(f"load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    peak = device_peak("cuda" if torch.cuda.is_available() else "cpu", sizes=(1024, 2048))
    print("device peak GFLOP/s: " + ", ".join(f"{k} {v:.1f}" for k, v in peak.items()))
    print(f"peak_share: {res['kit']['gflops'] / max(peak.values()):.3f}")
    trl_best = max((res[s]["tokens_per_s"] for s in res if s.startswith("trl")), default=None)
    if "trl-bf16" in res: print(f"speedup vs TRL defaults with bf16 (strict): {res['kit']['tokens_per_s'] / res['trl-bf16']['tokens_per_s']:.2f}")
    if "kit-compile" in res:
        c, k = res["kit-compile"], res["kit"]
        print(f"compile ({a.compile}, used {c['compile']['used']}): warm-up steps {c['warmup_seconds']:.1f}s vs eager "
              f"{k['warmup_seconds']:.1f}s (compile about {c['warmup_seconds'] - k['warmup_seconds']:.1f}s); "
              f"compiled_speedup: {c['tokens_per_s'] / k['tokens_per_s']:.2f}")
    if trl_best: print(f"speedup_vs_trl: {res['kit']['tokens_per_s'] / trl_best:.2f}")

if __name__ == "__main__":
    main()
