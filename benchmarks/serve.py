"""Benchmark: serving one base model with 4 LoRA adapters against 4 merged copies, on SmolLM2-135M-Instruct.

    python benchmarks/serve.py [--adapters 4] [--clients 8] [--requests 64] [--max-tokens 16] [--threads N]

Memory. 4 random-init LoRA adapters (the kit's default LoRA: rank 16 on every linear layer; B drawn at random so
that each adapter changes the model) are made in a temporary folder, and each is exported as a merged standalone
model with `finetune-kit export` (checked, `--dtype bfloat16`). Then two fresh subprocesses each import the same
libraries, read their resident set size (RSS, /proc/self/status) and load:
- `engine`: the base once with the 4 adapters, as `finetune-kit serve` does (`deploy.load_adapters`);
- `merged`: the 4 merged copies side by side, each loaded as `finetune-kit serve -p base_model MERGED` would.
Both load in the kit's precision (`dtype=auto`: bf16 where the hardware computes it). Every weight is then read (one
value per memory page), as the first requests would: a checkpoint already in the load precision is memory-mapped, and
its pages count only once read. The models' memory is RSS after loading minus RSS after the imports (the interpreter,
torch, transformers and peft weigh the same in both and are not model memory); both totals are printed too. Serving 4
merged copies from 4 processes would also pay the imports 4 times, so one process is the merged copies' best case.

Throughput. `finetune-kit serve` runs as a subprocess with the 4 adapters on a free loopback port (the real uvicorn
server); 8 client threads send OpenAI-style chat requests over HTTP, round-robin over the adapters (greedy, at most
`--max-tokens` new tokens), and the benchmark reports requests/s, new tokens/s, latency percentiles and the share of
batches that mixed adapters (the server's /health counts); then one client alone, for comparison. On a shared machine
the figures depend on its load (say so when quoting them; the load average is recorded with them).

Last line `memory_ratio: <engine model memory / merged model memory>`. Target: at most 0.35.
"""
from __future__ import annotations
import argparse, json, os, platform, shutil, socket, subprocess, sys, tempfile, threading, time
from pathlib import Path

def rss_mb() -> dict:
    "This process's resident memory in MiB: total, anonymous and file-backed (/proc/self/status)."
    kb = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        k, _, v = line.partition(":")
        if k in ("VmRSS", "RssAnon", "RssFile"): kb[k] = int(v.split()[0])
    return {k: round(v / 1024, 1) for k, v in kb.items()}

def measure(mode:str, base:str, folders:list[str], dtype:str) -> dict:
    "In this (fresh) process: RSS after the imports, then after loading `mode`'s models."
    import gc
    # the same imports in both modes before the first reading: everything either path imports
    import torch, transformers, peft, peft.tuners.lora  # noqa: F401
    from peft import PeftModel  # noqa: F401
    import finetune_kit.evaluate.run, finetune_kit.train, finetune_kit.evaluate.generate  # noqa: F401
    from finetune_kit.settings import make_config
    from finetune_kit.models import load_model, load_tokenizer
    from finetune_kit.deploy import load_adapters
    load_tokenizer(make_config({"base_model": folders[0] if mode == "merged" else base}))
    gc.collect()
    before = rss_mb()
    t = time.perf_counter()
    if mode == "engine":
        keep = load_adapters(base, {f"a{i}": f for i, f in enumerate(folders)}, {"dtype": dtype}, progress=False)
        params = sum(p.numel() for p in keep[0].parameters())
    else:
        keep = [load_model(make_config({"base_model": f, "dtype": dtype}), progress=False)[0] for f in folders]
        params = sum(p.numel() for m in keep for p in m.parameters())
    seconds = time.perf_counter() - t
    models = [keep[0]] if mode == "engine" else keep
    with torch.no_grad():  # one value in 1024 of every weight (every memory page): as the first requests would
        for m in models:
            for p in m.parameters(): float(p.detach().reshape(-1)[::1024].float().sum())
    gc.collect()
    after = rss_mb()
    return {"mode": mode, "before_mb": before, "after_mb": after,
            "model_mb": round(after["VmRSS"] - before["VmRSS"], 1), "params": params, "load_s": round(seconds, 1)}

def run_measure(mode:str, base:str, folders:list, dtype:str) -> dict:
    "`measure` in its own subprocess (so that neither side's freed memory or caches count for the other)."
    p = subprocess.run([sys.executable, __file__, "--measure", mode, "--model", base, "--dtype", dtype,
                        *map(str, folders)], capture_output=True, text=True)
    if p.returncode != 0: raise SystemExit(f"measure {mode} failed:\n{p.stderr[-3000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])

def make_adapters(base:str, folder:Path, n:int, seed:int=0) -> list[Path]:
    "`n` LoRA adapters of the kit's default config on `base`, B drawn at random (A is random already)."
    import torch
    from finetune_kit.settings import make_config
    from finetune_kit.models import load_model
    from finetune_kit.adapters import apply_peft, save_adapter
    cfg = make_config({"base_model": base, "dtype": "float32", "peft_method": "lora"})
    m, tok = load_model(cfg, progress=False)
    pm = apply_peft(m, cfg)
    g, out = torch.Generator().manual_seed(seed), []
    for i in range(n):
        with torch.no_grad():
            for name, p in pm.named_parameters():
                if "lora_B" in name: p.copy_(torch.randn(p.shape, generator=g) * 0.02)
        out.append(save_adapter(pm, folder/f"adapter{i}", tok))
    return out

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0)); return s.getsockname()[1]

def _pct(xs:list[float], q:float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]

def load_test(url:str, names:list[str], clients:int, n:int, max_tokens:int) -> dict:
    "`n` chat requests from `clients` threads over HTTP, round-robin over adapter `names`; rates and latencies."
    import httpx
    prompts = ["Classify the topic: the central bank raised interest rates again.",
               "Summarize: heavy rain flooded roads across the north on Monday.",
               "Write one sentence about the sea.", "List three colours, separated by commas."]
    lock, todo, lat, toks, status = threading.Lock(), list(range(n)), [], [], []
    def worker():
        with httpx.Client(base_url=url, timeout=600) as c:
            while True:
                with lock:
                    if not todo: return
                    i = todo.pop(0)
                t = time.perf_counter()
                r = c.post("/v1/chat/completions", json={"model": names[i % len(names)], "max_tokens": max_tokens,
                                                         "messages": [{"role": "user", "content": prompts[i % 4]}]})
                with lock:
                    lat.append(time.perf_counter() - t); status.append(r.status_code)
                    if r.status_code == 200: toks.append(r.json()["usage"]["completion_tokens"])
    h0 = httpx.get(url + "/health").json()
    t = time.perf_counter()
    ts = [threading.Thread(target=worker) for _ in range(clients)]
    for th in ts: th.start()
    for th in ts: th.join()
    wall = time.perf_counter() - t
    h1 = httpx.get(url + "/health").json()
    batches = h1["batches"] - h0["batches"]
    return {"clients": clients, "requests": n, "ok": status.count(200), "seconds": round(wall, 2),
            "requests_per_s": round(n / wall, 2), "new_tokens_per_s": round(sum(toks) / wall, 1),
            "mean_new_tokens": round(sum(toks) / max(len(toks), 1), 1),
            "latency_p50_s": round(_pct(lat, 0.5), 2), "latency_p95_s": round(_pct(lat, 0.95), 2),
            "batches": batches, "mean_batch": round((h1["served"] - h0["served"]) / max(batches, 1), 2),
            "mixed_batches": h1["mixed_batches"] - h0["mixed_batches"]}

def serve_and_load(base:str, adapters:list[Path], dtype:str, clients:int, n:int, n_single:int, max_tokens:int,
                   logdir:Path, threads:int|None=None) -> dict:
    "Start `finetune-kit serve` with the adapters on loopback, warm it up, load-test it with `clients`, then with one."
    import httpx
    port, names = _free_port(), [f"a{i}" for i in range(len(adapters))]
    exe = Path(sys.executable).parent/"finetune-kit"
    cmd = [str(exe), "serve", *[f"{n_}={p}" for n_, p in zip(names, adapters)], "--port", str(port), "-p", "dtype",
           dtype, "--max-batch", str(clients), "--log", str(logdir/"requests.jsonl"), "--feedback",
           str(logdir/"feedback.jsonl")]
    env = {**os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {})}
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        t = time.time()
        while True:
            if p.poll() is not None: raise SystemExit(f"serve failed:\n{p.stderr.read()[-3000:]}")
            try:
                if httpx.get(url + "/health").status_code == 200: break
            except httpx.TransportError: pass
            if time.time() - t > 600: raise SystemExit("serve did not start in 600 s")
            time.sleep(0.2)
        load_test(url, names, clients, clients, max_tokens)  # warm-up: one round
        many = load_test(url, names, clients, n, max_tokens)
        one = load_test(url, names, 1, n_single, max_tokens)
    finally:
        p.terminate()
        try: p.communicate(timeout=60)
        except subprocess.TimeoutExpired: p.kill()
    return {"concurrent": many, "single": one}

def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct", help="the base model")
    ap.add_argument("--adapters", type=int, default=4)
    ap.add_argument("--clients", type=int, default=8, help="concurrent clients (also the server's --max-batch)")
    ap.add_argument("--requests", type=int, default=64, help="requests in the concurrent load test")
    ap.add_argument("--single-requests", type=int, default=8, help="requests in the one-client comparison")
    ap.add_argument("--max-tokens", type=int, default=16, help="new tokens per answer, at most")
    ap.add_argument("--dtype", default="auto", help="model precision (auto: bf16 where the hardware computes it)")
    ap.add_argument("--threads", type=int, default=None, help="the server's torch threads (default: torch's choice; "
                    "on a machine shared with other jobs, fewer threads than cores keeps them from waiting on each "
                    "other)")
    ap.add_argument("--no-throughput", dest="throughput", action="store_false", help="memory only")
    ap.add_argument("--json", default=str(Path(__file__).with_suffix(".json")), help="where to write the figures")
    ap.add_argument("--measure", default=None, help=argparse.SUPPRESS)  # internal: engine|merged, in a subprocess
    ap.add_argument("folders", nargs="*", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.measure:
        print(json.dumps(measure(a.measure, a.model, a.folders, a.dtype))); return
    from finetune_kit.models import resolve_model
    resolve_model(a.model, progress=True)  # converted once, outside the timings
    tmp = Path(tempfile.mkdtemp(prefix="serve-bench-"))
    try: run(a, tmp)
    finally: shutil.rmtree(tmp, ignore_errors=True)

def run(a, tmp:Path):
    from finetune_kit.deploy import export_model
    load0 = os.getloadavg()[0]
    t = time.perf_counter()
    adapters = make_adapters(a.model, tmp, a.adapters)
    merged = []
    for i, ad in enumerate(adapters):
        r = export_model(ad, tmp/f"merged{i}", dtype="bfloat16", n_probes=0, progress=False)
        merged.append(r.out)
    rep = r.report
    print(f"made {a.adapters} adapters (rank 16, all linear layers, "
          f"{sum(f.stat().st_size for f in adapters[0].glob('*.safetensors')) / 2**20:.1f} MiB each on disk) and "
          f"{a.adapters} checked bf16 merged exports "
          f"({sum(f.stat().st_size for f in merged[0].glob('*.safetensors')) / 2**20:.0f} MiB each; last check: "
          f"logits within {rep['rel_diff']:.1e} of the scale, greedy {rep['greedy_agree']}/{rep['probes']}) "
          f"in {time.perf_counter() - t:.0f} s")
    eng = run_measure("engine", a.model, adapters, a.dtype)
    mer = run_measure("merged", a.model, merged, a.dtype)
    for m in (eng, mer):
        print(f"{m['mode']:>7}: {m['params'] / 1e6:.1f} M parameters resident, RSS {m['before_mb']['VmRSS']:.0f} MiB "
              f"after imports -> {m['after_mb']['VmRSS']:.0f} MiB loaded (anon {m['after_mb']['RssAnon']:.0f}, file "
              f"{m['after_mb']['RssFile']:.0f}); models {m['model_mb']:.0f} MiB; loaded in {m['load_s']} s")
    ratio = eng["model_mb"] / mer["model_mb"]
    total = eng["after_mb"]["VmRSS"] / mer["after_mb"]["VmRSS"]
    print(f"one base + {a.adapters} adapters: {eng['model_mb']:.0f} MiB; {a.adapters} merged copies: "
          f"{mer['model_mb']:.0f} MiB (whole processes, imports included: {eng['after_mb']['VmRSS']:.0f} vs "
          f"{mer['after_mb']['VmRSS']:.0f} MiB, ratio {total:.3f})")
    tp = None
    if a.throughput:
        tp = serve_and_load(a.model, adapters, a.dtype, a.clients, a.requests, a.single_requests, a.max_tokens, tmp,
                            a.threads)
        for k, v in tp.items(): print(f"{k}: {json.dumps(v)}")
        c, s = tp["concurrent"], tp["single"]
        print(f"requests/s: {c['requests_per_s']} with {a.clients} concurrent clients ({c['new_tokens_per_s']} new "
              f"tokens/s, p50 {c['latency_p50_s']} s, p95 {c['latency_p95_s']} s, mean batch {c['mean_batch']}, "
              f"{c['mixed_batches']}/{c['batches']} batches mixed adapters) vs {s['requests_per_s']} with one client: "
              f"{c['requests_per_s'] / s['requests_per_s']:.2f}x")
    res = {"model": a.model, "adapters": a.adapters, "dtype": a.dtype, "lora": "rank 16, all linear layers",
           "engine": eng, "merged": mer, "memory_ratio": round(ratio, 3), "process_ratio": round(total, 3),
           "throughput": tp, "max_tokens": a.max_tokens, "threads": a.threads, "cpus": os.cpu_count(),
           "load_average_at_start": round(load0, 2), "load_average_at_end": round(os.getloadavg()[0], 2),
           "machine": platform.processor() or platform.machine(), "date": time.strftime("%Y-%m-%d")}
    Path(a.json).write_text(json.dumps(res, indent=1) + "\n")
    print(f"wrote {a.json} (load average {load0:.1f} at the start, {res['load_average_at_end']:.1f} at the end, "
          f"{os.cpu_count()} CPUs)")
    print(f"memory_ratio: {ratio:.3f}")

if __name__ == "__main__": main()
