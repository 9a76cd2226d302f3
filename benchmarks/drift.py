"""Benchmark: how often `deploy.drift` alarms on in-distribution traffic, and how many requests after a shift it
takes to alarm. The library call on texts, no server, no model:

    python benchmarks/drift.py [--windows 100] [--streams 6] [--out benchmarks/drift.json]

The training side is the BBC set as `data prepare` makes it (a classification template, articles cut to 600
characters, 30% test); the served traffic is the prepared test split's inputs (in distribution), then one of three
shifts: WNUT-16 tweets, ACLSum paper text (both sent with the same classification prompt), or BBC test articles of
two topics only (sports and tech: a label shift in familiar language). The served answers, for the label test, come
from a stand-in for the adapter: TF-IDF + LinearSVC trained on the training split (the kit's tuned BBC adapter and
this baseline score within a few points of each other, DESIGN.md); no language model runs here.

False alarms: `--windows` windows of `window` requests, each a seeded draw of the in-distribution pool; the rate
with its Clopper-Pearson 95% interval, per test and overall. Detection delay: `--streams` streams of `window`
in-distribution requests followed by shifted ones, windows every `--step` requests; the delay is the number of
shifted requests served when the first window to alarm ends (its median and maximum over streams), overall and per
test.
"""
from __future__ import annotations
import argparse, json, random, sys, tempfile, time
from pathlib import Path

def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--windows", type=int, default=100)
    ap.add_argument("--streams", type=int, default=6)
    ap.add_argument("--window", type=int, default=100)
    ap.add_argument("--step", type=int, default=10)
    ap.add_argument("--after", type=int, default=100, help="shifted requests per stream")
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    import numpy as np
    from scipy.stats import binomtest
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.pipeline import make_pipeline
    from sklearn.svm import LinearSVC
    from finetune_kit.settings import make_config
    from finetune_kit.data import prepare_data
    from finetune_kit.data.packaged import load_aclsum, load_wnut16
    from finetune_kit.data.templates import make_prompt
    from finetune_kit.files import read_jsonl
    from finetune_kit.deploy.ab import last_user_text
    from finetune_kit.deploy.drift import DriftSettings, drift_windows, load_reference

    t0 = time.time()
    d = Path(tempfile.mkdtemp())/"bbc"
    info = prepare_data(make_config(settings=False, source="bbc", task="classification", max_records=None,
                                    max_chars=600, val_size=0.1, test_size=0.3, pii_scrub=False), d)
    ref = load_reference(d)
    test = read_jsonl(d/"test.jsonl")
    pool = [(last_user_text(r["prompt"]), r["completion"][-1]["content"]) for r in test]
    tmpl = info["template"]
    ask = lambda text: last_user_text(make_prompt({"text": text}, tmpl))
    shifts = {"tweets (wnut16)": [ask(" ".join(r["tokens"])) for r in load_wnut16()],
              "papers (aclsum)": [ask(r["document"]) for r in load_aclsum()],
              "topics (bbc sports+tech only)": [t for t, l in pool if l in ("sports", "tech")]}
    stand_in = make_pipeline(TfidfVectorizer(sublinear_tf=True, ngram_range=(1, 2)), LinearSVC())
    stand_in.fit(ref.texts, ref.labels)
    answer = lambda texts: list(stand_in.predict(texts))
    print(f"prepared bbc: {len(ref.texts)} training inputs, {len(pool)} test inputs ({time.time() - t0:.0f} s)",
          flush=True)

    st = DriftSettings(window=a.window)
    rng, rows = random.Random(0), []
    for i in range(a.windows):
        win = [t for t, _ in rng.sample(pool, a.window)]
        w, _ = drift_windows(win, ref, answer(win), settings=DriftSettings(window=a.window, seed=1000 + i))
        rows.append({k: bool(w.iloc[0][k]) for k in ("auc_alarm", "length_alarm", "label_alarm", "alarm")}
                    | {"auc": float(w.iloc[0]["auc"]), "ci_low": float(w.iloc[0]["ci_low"])})
    def rate(k):
        n = sum(r[k] for r in rows)
        ci = binomtest(n, len(rows)).proportion_ci(0.95, method="exact")
        return {"alarms": n, "windows": len(rows), "rate": n / len(rows), "ci95": [ci.low, ci.high]}
    false = {k.replace("_alarm", "") if k != "alarm" else "any": rate(k)
             for k in ("alarm", "auc_alarm", "length_alarm", "label_alarm")}
    false["auc_mean"] = float(np.mean([r["auc"] for r in rows]))
    print(f"false alarms over {a.windows} in-distribution windows of {a.window}: "
          + ", ".join(f"{k} {v['alarms']}/{v['windows']} ({v['rate']:.1%}, 95% CI {v['ci95'][0]:.1%}-{v['ci95'][1]:.1%})"
                      for k, v in false.items() if isinstance(v, dict)) + f" ({time.time() - t0:.0f} s)", flush=True)

    delays = {}
    for name, shifted in shifts.items():
        per = {k: [] for k in ("alarm", "auc_alarm", "length_alarm", "label_alarm")}
        pre_alarms = 0
        for s in range(a.streams):
            r2 = random.Random(100 + s)
            before = [t for t, _ in r2.sample(pool, a.window)]
            after = r2.sample(shifted, min(a.after, len(shifted)))
            stream = before + after
            w, _ = drift_windows(stream, ref, answer(stream),
                                 settings=DriftSettings(window=a.window, step=a.step, seed=s))
            pre_alarms += int(w.iloc[0]["alarm"])  # the window wholly before the shift
            for k in per:
                hit = w[(w["last"] >= a.window) & w[k]]
                per[k].append(int(hit["last"].iloc[0]) + 1 - a.window if len(hit) else None)
        delays[name] = {k.replace("_alarm", "") if k != "alarm" else "any":
                        {"median": float(np.median([x for x in v if x is not None])) if any(x is not None for x in v)
                         else None, "max": max((x for x in v if x is not None), default=None),
                         "missed": sum(x is None for x in v), "streams": len(v)} for k, v in per.items()}
        delays[name]["pre_shift_alarms"] = pre_alarms
        print(f"{name}: " + ", ".join(f"{k} median {v['median']} max {v['max']} missed {v['missed']}/{v['streams']}"
                                      for k, v in delays[name].items() if isinstance(v, dict))
              + f" ({time.time() - t0:.0f} s)", flush=True)
    out = {"settings": {**st.__dict__, "step": a.step, "after": a.after}, "training_inputs": len(ref.texts),
           "test_inputs": len(pool), "false_alarms": false, "detection_delay_requests": delays,
           "seconds": round(time.time() - t0, 1)}
    if a.out: Path(a.out).write_text(json.dumps(out, indent=2) + "\n")
    return out

if __name__ == "__main__":
    main(sys.argv[1:])
