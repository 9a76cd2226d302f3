"""Benchmark: batched greedy generation (left padding, batch 16) against one prompt at a time, with
`finetune_kit.engine.generate` on SmolLM2-135M-Instruct, on short BBC classification prompts.

    python benchmarks/eval_throughput.py [--n 32] [--batch-size 16] [--max-new-tokens 32] [--max-chars 160] [--threads N]

The generation budget defaults to the kit's evaluation default (32 new tokens). Prefill (the prompt, about 85 tokens here) is
compute-bound and gains little from batching; decoding one token per step is bound by reading the
weights, which one batched step reads once for 16 answers: the more new tokens, the larger the gain.
Answers end at different lengths; in a batch, `generate` drops each finished answer from the next
steps (one prompt at a time simply stops), so a batch does not pay for its longest answer 16 times.
Both modes call `generate` the same way (batch_size 1 or 16), so both reuse the KV cache of the
prompts' shared prefix (chat markup, system prompt, instruction, label list); `--no-prefix-cache`
turns that off for both. On a CPU, `generate` decodes with SDPA attention in both modes alike.

Both modes run in the same process on the same prompts (a warm-up call first), interleaved batch
by batch so that load from other processes affects both alike: the ratio is like for like. Prints
prompts/s, new tokens/s and useful GFLOP/s (every weight twice per token read or written, the output layer once per
new token) for each mode, the batched mode's share of the device's best matrix-product peak (`peak_share`), how
often the two modes' answers agree (batched and unbatched matmuls may differ in the last bits), and, with
`--agreement` (on by default where the precision is not fp32), how often the kit's precision (bf16 where the
hardware computes it) and fp32 give the same greedy answers to the same prompts. Last line
`batched_speedup: <ratio>`. Target: at least 4 on a 2-core CPU.
"""
from __future__ import annotations
import argparse, os, tempfile, time
from pathlib import Path
from _bench import device_peak, linear_params

def bbc_prompts(n:int, max_chars:int, seed:int=42) -> list[dict]:
    "`n` prepared BBC classification records (short texts), from the data stage."
    from finetune_kit.settings import make_config
    from finetune_kit.data import prepare_data
    from finetune_kit.files import read_jsonl
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
    ap.add_argument("--max-new-tokens", type=int, default=None,
                    help="generation budget (default: the kit's evaluation default, EvalConfig.max_new_tokens)")
    ap.add_argument("--max-chars", type=int, default=160, help="cut each article to this many characters (short prompts)")
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--dtype", default="auto", help="model precision (auto: bf16 where the hardware computes it)")
    ap.add_argument("--packed-weights", choices=("auto", "off"), default="auto",
                    help="the packed_weights setting: auto (oneDNN's packed weights on a CPU in float32) or off")
    ap.add_argument("--attn", default="auto", help="attention kernel (auto: eager on CPUs, sdpa on GPUs)")
    ap.add_argument("--agreement", default=None, action=argparse.BooleanOptionalAction,
                    help="compare the answers with an fp32 model's (default: on unless the precision is fp32)")
    ap.add_argument("--no-prefix-cache", dest="prefix_cache", action="store_false",
                    help="recompute the prompts' shared prefix in every call (both modes)")
    a = ap.parse_args()
    from finetune_kit.config import EvalConfig
    a.max_new_tokens = a.max_new_tokens or EvalConfig().max_new_tokens
    import torch
    if a.threads: torch.set_num_threads(a.threads)
    from finetune_kit.settings import make_config
    from finetune_kit.models import load_model
    from finetune_kit.engine import generate
    from finetune_kit.packed import packing_info
    recs = bbc_prompts(a.n, a.max_chars)
    model, tok = load_model(make_config(settings=False, base_model=a.model, dtype=a.dtype, attn_implementation=a.attn,
                                          packed_weights=a.packed_weights),
                            progress=False)
    lens = [len(tok(tok.apply_chat_template(r["prompt"], add_generation_prompt=True, tokenize=False), add_special_tokens=False)["input_ids"])
            for r in recs]
    print(f"model {a.model}, {len(recs)} prompts of {min(lens)}-{max(lens)} tokens (mean {sum(lens)/len(lens):.0f}), "
          f"max_new_tokens {a.max_new_tokens}, prefix cache {a.prefix_cache}, {model.dtype}, {model.config._attn_implementation} "
          f"attention, packed weights {packing_info(model)['used']}, torch threads {torch.get_num_threads()}, "
          f"load average {os.getloadavg()[0]:.2f}")
    generate(model, tok, recs[:2], batch_size=2, max_new_tokens=2, progress=False)  # warm-up

    # Interleave the two modes batch by batch (one-at-a-time over a batch's prompts, then that batch at
    # once), so that load from other processes drifts into both measurements alike.
    single, batched, t1, tb = [], [], 0.0, 0.0
    for s in range(0, len(recs), a.batch_size):
        chunk = recs[s:s + a.batch_size]
        t0 = time.perf_counter()
        single += generate(model, tok, chunk, batch_size=1, max_new_tokens=a.max_new_tokens, progress=False, prefix_cache=a.prefix_cache)
        t1 += time.perf_counter() - t0
        t0 = time.perf_counter()
        batched += generate(model, tok, chunk, batch_size=a.batch_size, max_new_tokens=a.max_new_tokens, progress=False,
                            prefix_cache=a.prefix_cache)
        tb += time.perf_counter() - t0
    new_tokens = lambda outs: sum(len(tok(o, add_special_tokens=False)["input_ids"]) + 1 for o in outs)  # + its end
    blocks, head = linear_params(model)
    flops = lambda outs: 2 * blocks * (sum(lens) + new_tokens(outs)) + 2 * head * new_tokens(outs)
    gflops = {}
    for name, outs, t in (("one at a time", single, t1), (f"batch {a.batch_size}", batched, tb)):
        gflops[name] = flops(outs) / t / 1e9
        print(f"{name:>14}: {t:6.1f} s  {len(recs)/t:5.2f} prompts/s  {new_tokens(outs)/t:6.1f} new tokens/s  "
              f"{gflops[name]:6.1f} useful GFLOP/s")
    agree = sum(x == y for x, y in zip(single, batched))/len(recs)
    print(f"answers identical in both modes: {agree:.0%}; e.g. {batched[0]!r}")
    if a.agreement if a.agreement is not None else model.dtype != torch.float32:
        ref, _ = load_model(make_config(settings=False, base_model=a.model, dtype="float32"), progress=False)
        fp32 = generate(ref, tok, recs, batch_size=a.batch_size, max_new_tokens=a.max_new_tokens, progress=False)
        same = sum(x == y for x, y in zip(batched, fp32))
        first = sum(x.split()[:1] == y.split()[:1] for x, y in zip(batched, fp32))
        print(f"{model.dtype} vs fp32 greedy answers: {same}/{len(recs)} identical ({same/len(recs):.0%}), "
              f"{first}/{len(recs)} with the same first word")
        del ref
    peak = device_peak("cuda" if torch.cuda.is_available() else "cpu", sizes=(1024, 2048))
    print("device peak GFLOP/s: " + ", ".join(f"{k} {v:.1f}" for k, v in peak.items()))
    print(f"peak_share: {gflops[f'batch {a.batch_size}'] / max(peak.values()):.3f}")
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    print(f"batched_speedup: {t1/tb:.2f}")

if __name__ == "__main__":
    main()
