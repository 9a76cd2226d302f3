"""Benchmark: batched greedy generation (left padding, batch 16) against one prompt at a time, with
`finetune_kit.evaluate.generate` on SmolLM2-135M-Instruct, on short BBC classification prompts.

    python benchmarks/eval_throughput.py [--n 32] [--batch-size 16] [--max-new-tokens 8] [--max-chars 160]

Both modes run in the same process on the same prompts (a warm-up call first), so the ratio is
like for like. Prints prompts/s and new tokens/s for each mode, how often the two modes' answers
agree (fp32 batched and unbatched matmuls may differ in the last bits), and last the line
`batched_speedup: <ratio>`. Target: at least 3 on a 2-core CPU.
"""
from __future__ import annotations
import argparse, os, tempfile, time
from pathlib import Path

def bbc_prompts(n:int, max_chars:int, seed:int=42) -> list[dict]:
    "`n` prepared BBC classification records (short texts), from the data stage."
    from finetune_kit.config import make_config
    from finetune_kit.data import prepare_data
    from finetune_kit.evaluate import read_jsonl
    out = Path(tempfile.mkdtemp(prefix="eval-bench-"))
    cfg = make_config(settings=False, source="bbc", task="classification", max_records=max(4*n, 100), max_chars=max_chars,
                      pii_scrub=False, seed=seed)
    prepare_data(cfg, out)
    recs = [r for s in ("test", "validation", "train") for r in read_jsonl(out/f"{s}.jsonl")]
    return recs[:n]

def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=32, help="prompts")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-new-tokens", type=int, default=8, help="a label is a token or two; base SmolLM2 often writes more")
    ap.add_argument("--max-chars", type=int, default=160, help="cut each article to this many characters (short prompts)")
    ap.add_argument("--model", default="smollm2-135m-instruct")
    a = ap.parse_args()
    import torch
    from finetune_kit.config import make_config
    from finetune_kit.models import load_model
    from finetune_kit.evaluate import generate
    recs = bbc_prompts(a.n, a.max_chars)
    model, tok = load_model(make_config(settings=False, base_model=a.model), progress=False)
    lens = [len(tok(tok.apply_chat_template(r["prompt"], add_generation_prompt=True, tokenize=False), add_special_tokens=False)["input_ids"])
            for r in recs]
    print(f"model {a.model}, {len(recs)} prompts of {min(lens)}-{max(lens)} tokens (mean {sum(lens)/len(lens):.0f}), "
          f"max_new_tokens {a.max_new_tokens}, torch threads {torch.get_num_threads()}, load average {os.getloadavg()[0]:.2f}")
    generate(model, tok, recs[:2], batch_size=2, max_new_tokens=2, progress=False)  # warm-up

    def timed(bs):
        t0 = time.perf_counter()
        out = generate(model, tok, recs, batch_size=bs, max_new_tokens=a.max_new_tokens, progress=False)
        return out, time.perf_counter() - t0

    single, t1 = timed(1)
    batched, tb = timed(a.batch_size)
    new_tokens = lambda outs: sum(len(tok(o, add_special_tokens=False)["input_ids"]) for o in outs)
    for name, outs, t in (("one at a time", single, t1), (f"batch {a.batch_size}", batched, tb)):
        print(f"{name:>14}: {t:6.1f} s  {len(recs)/t:5.2f} prompts/s  {new_tokens(outs)/t:6.1f} new tokens/s")
    agree = sum(x == y for x, y in zip(single, batched))/len(recs)
    print(f"answers identical in both modes: {agree:.0%}; e.g. {batched[0]!r}")
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    print(f"batched_speedup: {t1/tb:.2f}")

if __name__ == "__main__":
    main()
