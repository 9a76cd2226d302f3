"""Benchmark: prepare 100,000 generated short classification records (near duplicates, PII and
malformed lines included) with `finetune_kit.data.prepare_data`, and print records/s.

    python benchmarks/data_prep.py [--n 100000] [--no-tokenizer] [--profile]

The last line is `seconds: <s>` (wall time of `prepare_data`, reading the file and writing the
prepared folder and card included; generating the file is not timed). Target: under 60 s on a
2-core machine. Token statistics use the tiny test tokenizer (`--no-tokenizer` skips them).
"""
from __future__ import annotations
import argparse, json, random, sys, tempfile, time
from pathlib import Path

LABELS = ["business", "entertainment", "politics", "sport", "tech"]

def make_words(n=3000, seed=0):
    rng = random.Random(seed)
    syll = "ka lo mi ne su ta ri po ve da fu ge hi jo be ro sa ti mo nu".split()
    return sorted({"".join(rng.choice(syll) for _ in range(rng.randint(1, 4))) for _ in range(n)})

def generate(path:Path, n:int, seed:int=0) -> dict:
    "Write `n` JSONL lines: ~5% exact-ish copies, ~5% near copies (a typo), ~3% with PII, ~1% malformed."
    rng, words = random.Random(seed), make_words()
    kinds, lines, good = {"exact": 0, "near": 0, "pii": 0, "malformed": 0}, [], []
    pii = ["write to {}.{}@example.com", "call (415) 555-{:04d}", "card 4111 1111 1111 1111", "from 10.0.{}.{}"]
    for i in range(n):
        r = rng.random()
        src = good[rng.randrange(max(0, len(good) - 2000), len(good))] if good else None
        if src and r < 0.05:  # exact copy up to case, spacing and punctuation
            lines.append(json.dumps({"text": "  " + src["text"].upper() + " !", "label": src["label"]})); kinds["exact"] += 1; continue
        if src and r < 0.10 and len(t := src["text"]) >= 100:  # near copy: a typo
            k = rng.randrange(len(t) - 1)
            lines.append(json.dumps({"text": t[:k] + rng.choice("aeiouxyz") + t[k + 1:], "label": src["label"]})); kinds["near"] += 1; continue
        if 0.10 <= r < 0.11:  # malformed
            lines.append(rng.choice(['{"text": "cut off', '{"text": "", "label": "tech"}', '{"label": "sport"}', '["not", "an", "object"]']))
            kinds["malformed"] += 1; continue
        text = " ".join(rng.choice(words) for _ in range(rng.randint(8, 30))).capitalize() + "."
        if r < 0.14: text += " " + rng.choice(pii).format(rng.randint(0, 255), rng.randint(0, 255)); kinds["pii"] += 1
        rec = {"text": text, "label": rng.choice(LABELS), "id": i}
        good.append(rec); lines.append(json.dumps(rec))
    path.write_text("\n".join(lines) + "\n")
    return kinds

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--no-tokenizer", action="store_true", help="skip token statistics")
    ap.add_argument("--profile", action="store_true", help="print the top functions by cumulative time")
    args = ap.parse_args(argv)
    from finetune_kit.settings import make_config
    from finetune_kit.data import prepare_data
    tok = None
    if not args.no_tokenizer:
        from finetune_kit.testing import make_tiny_tokenizer
        tok = make_tiny_tokenizer()
    with tempfile.TemporaryDirectory() as d:
        src = Path(d)/"records.jsonl"
        kinds = generate(src, args.n)
        print(f"generated {args.n} records: {kinds}", flush=True)
        cfg = make_config(settings=False, source=str(src), task="classification", max_records=None, max_chars=None)
        t0, c0 = time.perf_counter(), time.process_time()
        if args.profile:
            import cProfile, pstats
            prof = cProfile.Profile(); prof.enable()
        info = prepare_data(cfg, Path(d)/"out", tokenizer=tok)
        secs, cpu = time.perf_counter() - t0, time.process_time() - c0
        if args.profile:
            prof.disable(); pstats.Stats(prof, stream=sys.stdout).sort_stats("cumulative").print_stats(30)
    c = info["counts"]
    print(f"read {c['read']}, kept {c['kept']}, rejected {c['rejected']} {c['rejected_by_reason']}, "
          f"duplicates {c['duplicates_by_kind']}, reconciled {c['reconciled']}")
    print(f"pii: {info['pii']['by_type']}; tokens: {'measured' if tok else 'skipped'}")
    print(f"records/s: {c['read'] / secs:,.0f}")
    print(f"cpu seconds: {cpu:.1f} (wall time above this means other processes shared the cores)")
    print(f"seconds: {secs:.1f}")

if __name__ == "__main__":
    main()
