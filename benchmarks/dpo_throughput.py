"""DPO throughput on SmolLM2-135M-Instruct, LoRA r=16 (all linear layers), BBC topic pairs.

Measures optimizer steps (and preference pairs) per second of
- kit: the kit's DPO (`train -p objective dpo`: `finetune_kit.train.training_args` under the kit's hardware rules,
  turned into TRL's `DPOConfig` by `finetune_kit.trainers.objective_args`, TRL's `DPOTrainer` with the kit's additions,
  the adapter from `start_model`, the reference as the adapter switched off), and
- trl: TRL's `DPOTrainer` with its default `DPOConfig` (the same LoRA via `peft_config`; `use_cpu=True` on a machine
  without CUDA, as TRL demands there), with TRL's default `bf16=True` measured as `trl-bf16`; the ratio is taken
  against the faster of TRL's runs, so it is not inflated by a precision this CPU runs slowly,
on the same pairs, the same machine, in one run; each side in its own process, the steps after the warm-up timed.

The pairs are BBC articles cut to `--max-chars` with the gold topic as `chosen` and another topic as `rejected`
(throughput depends on the shapes, not on where the pairs came from). Both sides read them in TRL's conversational
form. The batch sizes are each side's default; pairs/s is printed beside steps/s for that reason.

Last line: `dpo_steps_per_s_ratio: <kit steps/s / the faster TRL default run's steps/s>` (target: >= 1, the kit's
hardware rules do not make DPO slower). On a free 2-core CPU the default run (12 timed steps per side, three sides)
takes about 15-30 minutes; `--steps 4 --records 60` about 5.

    python benchmarks/dpo_throughput.py [--steps 12] [--warmup 2] [--records 200] [--max-chars 300] [--sides kit,trl,trl-bf16]
    python benchmarks/dpo_throughput.py --model tiny-test --steps 2 --records 40   # a smoke test of the script
"""
import argparse, json, random, subprocess, sys, tempfile, time
from pathlib import Path

LABELS = ["business", "entertainment", "politics", "sport", "tech"]

def make_pairs(out:Path, records:int, max_chars:int, model:str, seed:int=42) -> Path:
    "BBC records prepared by the data stage, as a prepared `preference` folder (gold topic chosen, another rejected)."
    from finetune_kit.settings import make_config
    from finetune_kit.data import prepare_data
    from finetune_kit.files import read_jsonl, write_jsonl
    cls = out/"bbc"
    prepare_data(make_config({"source": "bbc", "max_records": records, "max_chars": max_chars, "base_model": model,
                              "pii_scrub": False, "seed": seed}, settings=False), cls)
    rng = random.Random(seed)
    pairs = [{"prompt": r["prompt"], "chosen": r["reference"],
              "rejected": rng.choice([l for l in LABELS if l != r["reference"]])}
             for s in ("train", "validation") for r in read_jsonl(cls/f"{s}.jsonl")]
    write_jsonl(pairs, out/"pairs.jsonl")
    prepare_data(make_config({"source": str(out/"pairs.jsonl"), "task": "preference", "max_records": None,
                              "base_model": model, "pii_scrub": False, "seed": seed, "test_size": 0.0,
                              "val_size": 0.0}, settings=False), out/"pairs")
    return out/"pairs"

def measure(side:str, steps:int, warmup:int, data_dir:str, model_name:str) -> dict:
    import torch
    from transformers import TrainerCallback
    from finetune_kit.settings import make_config
    from finetune_kit.data import load_splits
    from finetune_kit.models import load_model
    from finetune_kit.trainers import objective_data
    cfg = make_config({"base_model": model_name, "peft_method": "lora", "lora_r": 16, "report_to": "none",
                       "max_steps": steps + warmup, "objective": "dpo", "task": "preference", "data_dir": data_dir},
                      settings=False)
    splits = load_splits(data_dir)

    class Clock(TrainerCallback):
        "Time the steps after the warm-up."
        def on_step_begin(self, args, state, control, **kw):
            if state.global_step == warmup: self.t = time.perf_counter()
        def on_train_end(self, args, state, control, **kw): self.seconds = time.perf_counter() - self.t

    clock = Clock()
    with tempfile.TemporaryDirectory() as d:
        if side == "kit":
            from finetune_kit.train import training_args
            from finetune_kit.trainers import objective_trainer, start_model
            model, tok = load_model(cfg, progress=False)
            model = start_model(model, cfg)
            trainer = objective_trainer(cfg, model, tok, splits, training_args(cfg, d, save_strategy="no",
                                                                              disable_tqdm=True, eval_strategy="no"),
                                        [clock], {"task": "preference"})
        else:
            from peft import LoraConfig
            from trl import DPOConfig, DPOTrainer
            from finetune_kit.models import load_tokenizer, resolve_model
            cpu = not torch.cuda.is_available()
            args = DPOConfig(d, max_steps=steps + warmup, use_cpu=cpu, bf16=(side == "trl-bf16") if cpu else None,
                             report_to="none", save_strategy="no", disable_tqdm=True,
                             model_init_kwargs={"dtype": torch.float32})
            trainer = DPOTrainer(model=str(resolve_model(model_name, progress=False)), args=args,
                                 train_dataset=objective_data("dpo", splits["train"]),
                                 processing_class=load_tokenizer(model_name),
                                 peft_config=LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05,
                                                        target_modules="all-linear", task_type="CAUSAL_LM"),
                                 callbacks=[clock])
        trainer.train()
        a = trainer.args
        pairs = steps * a.per_device_train_batch_size * a.gradient_accumulation_steps
        return {"side": side, "steps": steps, "seconds": clock.seconds, "steps_per_s": steps / clock.seconds,
                "pairs_per_s": pairs / clock.seconds, "batch": a.per_device_train_batch_size,
                "accumulation": a.gradient_accumulation_steps, "bf16": bool(a.bf16),
                "gradient_checkpointing": bool(a.gradient_checkpointing), "max_length": getattr(a, "max_length", None),
                "reference_model": getattr(trainer, "ref_model", None) is not None}

def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=12, help="timed steps per side")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    ap.add_argument("--records", type=int, default=200, help="BBC records turned into pairs")
    ap.add_argument("--max-chars", type=int, default=300, help="cut each article to this many characters")
    ap.add_argument("--model", default="smollm2-135m-instruct", help="base model (tiny-test: a smoke test of the script)")
    ap.add_argument("--sides", default="kit,trl,trl-bf16", help="comma-separated: kit, trl (fp32), trl-bf16 (TRL's default)")
    ap.add_argument("--one", metavar="SIDE", help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.one:
        print(json.dumps(measure(a.one, a.steps, a.warmup, a.data, a.model)))
        return
    res = {}
    with tempfile.TemporaryDirectory() as tmp:
        data = make_pairs(Path(tmp), a.records, a.max_chars, a.model)
        n = json.loads((data/"data.json").read_text())["counts"]["splits"]["train"]
        print(f"{n} BBC pairs (articles cut to {a.max_chars} characters)", flush=True)
        for side in a.sides.split(","):
            r = subprocess.run([sys.executable, __file__, "--one", side, "--data", str(data), "--steps", str(a.steps),
                                "--warmup", str(a.warmup), "--model", a.model], capture_output=True, text=True)
            if r.returncode: sys.exit(f"{side} failed:\n{r.stderr[-3000:]}")
            x = res[side] = json.loads(r.stdout.strip().splitlines()[-1])
            print(f"{side:9s} {x['steps_per_s']:.4f} steps/s, {x['pairs_per_s']:.3f} pairs/s ({x['steps']} steps in "
                  f"{x['seconds']:.1f}s; batch {x['batch']} x {x['accumulation']}, bf16 {x['bf16']}, gradient "
                  f"checkpointing {x['gradient_checkpointing']}, max_length {x['max_length']}, reference model loaded "
                  f"{x['reference_model']})", flush=True)
    trl = [s for s in res if s.startswith("trl")]
    if "kit" not in res or not trl: return
    best = max(trl, key=lambda s: res[s]["steps_per_s"])
    print(f"pairs/s ratio (kit / {best}): {res['kit']['pairs_per_s'] / res[best]['pairs_per_s']:.2f}")
    print(f"dpo_steps_per_s_ratio: {res['kit']['steps_per_s'] / res[best]['steps_per_s']:.2f}")

if __name__ == "__main__":
    main()
