"""Benchmark: the server under Poisson load, continuous batching against the per-batch scheduler, in one run.

    python benchmarks/serve_load.py [--model tiny-test|smollm2] [--rates 0.5,1,2] [--requests 48] [--quick]

Two `finetune-kit serve` processes, one per scheduler (`--scheduler continuous` and `--scheduler batch`), serve the same
base model with the same 3 LoRA adapters (random B, so that each answers differently), on free loopback ports with the
same `--max-batch`. A load generator (one asyncio thread, httpx) sends OpenAI-style streaming chat requests at Poisson
arrival times (seeded: both servers get the same requests at the same moments) with a mix users send: 60% short
classification answers (`--short-tokens`, a topic label) and 40% longer generations (`--long-tokens`), each for one of
the adapters or the base, at random. The load is bounded: `--requests` per rate, at most `--max-inflight` open at once
(a later arrival waits in the client, and its wait counts in its latency), and a request timeout.

Rates: `--rates` in requests/s, or (the default) multiples of the per-batch server's capacity, measured first on this
machine with a burst of requests (so the rates mean the same on a fast or a busy machine): 0.3, 1, 2 and 4x it.
A burst understates what the per-batch server completes under steady arrivals (fuller batches): at 2x it, with
160 requests, it still completed 92% of the offered load, so the heaviest rate is 4x.
The servers alternate at each rate (batch first at one, continuous at the next) so that a drift in the machine's load
weighs on both.

Per scheduler and rate: completed requests/s and generated tokens/s (over the span from the first arrival to the last
answer), time to first token (the first chunk with text) and end-to-end latency p50/p95/p99, both from each request's
scheduled arrival, and refusals. The saturation rate is the lowest rate at which the per-batch server completes less
than 90% of the offered rate. There a ratio of completed requests is capped near 1/0.9 whatever the scheduler, since
a server completes no more than it is offered, so the throughputs are compared at the heaviest load (4x the
per-batch burst capacity), where the per-batch server is saturated and each completes what it can; the ratio at the
saturation rate is printed beside it with its cap. The last lines: `throughput_ratio: <continuous req/s / batch
req/s>` (target at least 1.5) and `ttft_p95_ratio: <continuous p95 TTFT / batch p95 TTFT>` (target at most 1), at
that heaviest load, after `low_load_e2e_p50_ratio` at the lowest rate (target within 1.1).

`--quick` (for a check that it runs, on the tiny model): 2 rates, 12 requests each, shorter answers. On a machine
shared with other jobs the figures depend on its load: the load average is recorded with them.
"""
from __future__ import annotations
import argparse, asyncio, json, os, platform, random, shutil, signal, socket, subprocess, sys, tempfile, time
from pathlib import Path

SHORT = ["the central bank raised interest rates again as inflation stayed high",
         "the striker scored twice in the second half to win the cup final",
         "the new phone has a faster chip and a brighter screen",
         "parliament voted on the budget after a long debate",
         "the film won three awards at the festival on Sunday",
         "shares in the airline fell after it cut its profit forecast",
         "the tennis champion withdrew from the tournament with an injury",
         "a start-up released an open-source database for mobile apps"]
LONG = ["Write a short story about a lighthouse keeper.", "Explain how a refrigerator works.",
        "Describe a walk through a city at night.", "Write a letter to a friend about a trip to the mountains.",
        "Explain why the sky is blue to a child.", "Describe the history of the bicycle."]
LABELS = "business, entertainment, politics, sport or tech"

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0)); return s.getsockname()[1]

def pct(xs:list[float], q:float) -> float|None:
    "The `q` quantile of `xs` (nearest rank); None for no values."
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))] if xs else None

def workload(n:int, rate:float, names:list[str], short_tokens:int, long_tokens:int, seed:int) -> list[dict]:
    "`n` requests with Poisson arrival times at `rate`/s: 60% short classifications, 40% longer generations."
    rng, t, out = random.Random(seed), 0.0, []
    for i in range(n):
        t += rng.expovariate(rate)
        short = rng.random() < 0.6
        text = (f"Classify the topic of this text as {LABELS}. Answer with the label only.\n\n{rng.choice(SHORT)}"
                if short else rng.choice(LONG))
        out.append({"at": t, "kind": "short" if short else "long", "body": {
            "model": rng.choice(names), "messages": [{"role": "user", "content": text}],
            "max_tokens": short_tokens if short else long_tokens, "stream": True,
            "stream_options": {"include_usage": True}}})
    return out

async def _one(client, t0:float, req:dict, sem, timeout:float) -> dict:
    "Send one streaming request at its arrival time; its TTFT, latency and tokens, counted from that time."
    import httpx
    await asyncio.sleep(max(0.0, t0 + req["at"] - time.perf_counter()))
    start, ttft, tokens, status = t0 + req["at"], None, None, None
    async with sem:
        try:
            async with client.stream("POST", "/v1/chat/completions", json=req["body"], timeout=timeout) as r:
                status = r.status_code
                if status != 200: await r.aread()
                else:
                    async for line in r.aiter_lines():
                        if not line.startswith("data: ") or line == "data: [DONE]": continue
                        d = json.loads(line[6:])
                        if d.get("usage"): tokens = d["usage"]["completion_tokens"]
                        if "error" in d: status = 500
                        if ttft is None and any(c["delta"].get("content") for c in d.get("choices", [])):
                            ttft = time.perf_counter() - start
        except httpx.HTTPError as e: status = type(e).__name__
    end = time.perf_counter() - start
    return {"kind": req["kind"], "status": status, "ttft": ttft if ttft is not None else end, "e2e": end,
            "tokens": tokens or 0, "done_at": time.perf_counter() - t0}

async def _load(url:str, reqs:list[dict], max_inflight:int, timeout:float) -> list[dict]:
    import httpx
    limits = httpx.Limits(max_connections=max_inflight, max_keepalive_connections=max_inflight)
    async with httpx.AsyncClient(base_url=url, limits=limits) as client:
        sem, t0 = asyncio.Semaphore(max_inflight), time.perf_counter() + 0.05
        return await asyncio.gather(*[_one(client, t0, r, sem, timeout) for r in reqs])

def run_load(url:str, reqs:list[dict], max_inflight:int=64, timeout:float=600) -> dict:
    "The figures of `reqs` sent to `url` at their arrival times."
    res = asyncio.run(_load(url, reqs, max_inflight, timeout))
    ok = [r for r in res if r["status"] == 200]
    span = max((r["done_at"] for r in ok), default=0) - reqs[0]["at"]
    out = {"offered_per_s": round(len(reqs) / reqs[-1]["at"], 3), "requests": len(reqs), "completed": len(ok),
           "refused": sum(r["status"] == 429 for r in res), "failed": sum(r["status"] not in (200, 429) for r in res),
           "seconds": round(span, 2), "requests_per_s": round(len(ok) / span, 3) if span > 0 else 0.0,
           "tokens_per_s": round(sum(r["tokens"] for r in ok) / span, 1) if span > 0 else 0.0}
    for k in ("ttft", "e2e"):
        for q in (50, 95, 99):
            v = pct([r[k] for r in ok], q / 100)
            out[f"{k}_p{q}_s"] = round(v, 3) if v is not None else None
    out["short_e2e_p50_s"] = round(pct([r["e2e"] for r in ok if r["kind"] == "short"], 0.5) or 0, 3)
    return out

class Server:
    "`finetune-kit serve` in a subprocess on a free loopback port, with one scheduler."
    def __init__(self, base:str, adapters:dict, scheduler:str, dtype:str, max_batch:int, max_tokens:int,
                 logdir:Path, threads:int|None, prefix_cache:bool=True, packed_weights:str="auto"):
        import httpx
        self.port = free_port()
        self.url, self.scheduler = f"http://127.0.0.1:{self.port}", scheduler
        exe = Path(sys.executable).parent/"finetune-kit"
        cmd = [str(exe), "serve", *[f"{n}={p}" for n, p in adapters.items()], "-p", "base_model", base, "-p", "dtype",
               dtype, "-p", "packed_weights", packed_weights, "--port", str(self.port), "--scheduler", scheduler,
               "--max-batch", str(max_batch),
               "--max-queue", "1024", "--max-tokens", str(max_tokens), "--log", str(logdir/f"{scheduler}.jsonl"),
               "--feedback", str(logdir/f"{scheduler}-feedback.jsonl"), *([] if prefix_cache else ["--no-prefix-cache"])]
        env = {**os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {})}
        self.p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        t = time.time()
        while True:
            if self.p.poll() is not None: raise SystemExit(f"serve ({scheduler}) failed:\n{self.p.stderr.read()[-3000:]}")
            try:
                if httpx.get(self.url + "/health").status_code == 200: break
            except httpx.TransportError: pass
            if time.time() - t > 600: raise SystemExit(f"serve ({scheduler}) did not start in 600 s")
            time.sleep(0.2)

    def health(self) -> dict:
        import httpx
        return httpx.get(self.url + "/health").json()

    def close(self):
        self.p.send_signal(signal.SIGINT)
        try: self.p.communicate(timeout=60)
        except subprocess.TimeoutExpired: self.p.kill(); self.p.communicate()

def capacity(server:Server, names:list[str], a) -> float:
    "Completed requests/s of `server` under a burst of the mix (all arriving within a few milliseconds)."
    reqs = workload(a.burst, 1000.0, names, a.short_tokens, a.long_tokens, a.seed + 1)
    return run_load(server.url, reqs, a.max_inflight)["requests_per_s"]

def make_adapters(base:str, folder:Path, n:int, seed:int=0) -> dict:
    "`n` rank-8 LoRA adapters on `base` (all linear layers), B drawn at random so that each changes the answers."
    import torch
    from finetune_kit.settings import make_config
    from finetune_kit.models import load_model
    from finetune_kit.adapters import apply_peft, save_adapter
    cfg = make_config({"base_model": base, "dtype": "float32", "peft_method": "lora", "lora_r": 8})
    m, tok = load_model(cfg, progress=False)
    pm = apply_peft(m, cfg)
    g, out = torch.Generator().manual_seed(seed), {}
    for i in range(n):
        with torch.no_grad():
            for name, p in pm.named_parameters():
                if "lora_B" in name: p.copy_(torch.randn(p.shape, generator=g) * 0.02)
        out[f"a{i}"] = save_adapter(pm, folder/f"adapter{i}", tok)
    return out

def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="tiny-test", help="the base model: tiny-test, or smollm2 (SmolLM2-135M-Instruct)")
    ap.add_argument("--dtype", default=None, help="model precision (default: float32 for tiny-test, auto otherwise)")
    ap.add_argument("--adapters", type=int, default=3)
    ap.add_argument("--rates", default=None, help="arrival rates in requests/s, comma-separated (default: 0.3, 0.7, "
                    "1.2 and 2x the per-batch server's measured capacity)")
    ap.add_argument("--requests", type=int, default=48, help="requests per rate and scheduler")
    ap.add_argument("--burst", type=int, default=24, help="requests in the capacity measurement")
    ap.add_argument("--max-batch", type=int, default=8, help="both servers' --max-batch")
    ap.add_argument("--short-tokens", type=int, default=4, help="max_tokens of a classification request")
    ap.add_argument("--long-tokens", type=int, default=64, help="max_tokens of a generation request")
    ap.add_argument("--max-inflight", type=int, default=64, help="requests open at once, at most (the load's bound)")
    ap.add_argument("--timeout", type=float, default=600, help="seconds a request may take")
    ap.add_argument("--threads", type=int, default=1, help="each server's torch threads (OMP_NUM_THREADS)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--prefix-cache", choices=("on", "off"), default="on",
                    help="both servers keep the template's prefix in a KV cache (the default) or prefill whole prompts")
    ap.add_argument("--packed-weights", choices=("auto", "off"), default="auto",
                    help="both servers' packed_weights setting: auto (oneDNN's packed weights on a CPU in float32) or off")
    ap.add_argument("--quick", action="store_true", help="a short check: 2 rates, 12 requests each, 24-token "
                    "generations, a burst of 12")
    ap.add_argument("--json", default=None, help="where to write the figures (default: none)")
    a = ap.parse_args()
    if a.model == "smollm2": a.model = "smollm2-135m-instruct"
    a.dtype = a.dtype or ("float32" if a.model == "tiny-test" else "auto")
    if a.quick: a.requests, a.burst, a.long_tokens = 12, 12, min(a.long_tokens, 24)
    from finetune_kit.models import resolve_model
    resolve_model(a.model, progress=True)  # converted or built once, outside the timings
    tmp = Path(tempfile.mkdtemp(prefix="serve-load-"))
    try: run(a, tmp)
    finally: shutil.rmtree(tmp, ignore_errors=True)

def run(a, tmp:Path):
    t_start, load0 = time.perf_counter(), os.getloadavg()[0]
    adapters = make_adapters(a.model, tmp, a.adapters, a.seed)
    names = [*adapters, a.model]  # the base model too
    servers = {s: Server(a.model, adapters, s, a.dtype, a.max_batch, max(a.short_tokens, a.long_tokens), tmp,
                         a.threads, a.prefix_cache == "on", a.packed_weights) for s in ("batch", "continuous")}
    try:
        for s in servers.values(): run_load(s.url, workload(4, 50.0, names, 2, 4, a.seed + 2))  # warm-up
        if a.rates: rates = [float(r) for r in a.rates.split(",")]
        else:
            cap = capacity(servers["batch"], names, a)
            mults = (0.3, 1.5) if a.quick else (0.3, 1.0, 2.0, 4.0)
            rates = [round(m * cap, 3) for m in mults]
            print(f"per-batch server capacity: {cap:.3f} requests/s (a burst of {a.burst}); rates {rates}", flush=True)
        res = {s: {} for s in servers}
        for i, rate in enumerate(rates):
            reqs = workload(a.requests, rate, names, a.short_tokens, a.long_tokens, a.seed + 10 + i)
            order = ("batch", "continuous") if i % 2 == 0 else ("continuous", "batch")
            for s in order:
                h0 = servers[s].health()
                r = run_load(servers[s].url, reqs, a.max_inflight, a.timeout)
                h1 = servers[s].health()
                r["mean_join"] = round((h1["served"] - h0["served"]) / max(h1["batches"] - h0["batches"], 1), 2)
                res[s][rate] = r
                print(f"{s:>10} at {rate:g}/s: {json.dumps(r)}", flush=True)
    finally:
        for s in servers.values(): s.close()
    print()
    print(f"{'scheduler':>10} {'rate':>7} {'req/s':>7} {'tok/s':>7} {'ttft p50':>9} {'p95':>7} {'p99':>7} "
          f"{'e2e p50':>8} {'p95':>7} {'p99':>7} {'short p50':>9} {'refused':>7}")
    for rate in rates:
        for s in ("batch", "continuous"):
            r = res[s][rate]
            print(f"{s:>10} {rate:>7g} {r['requests_per_s']:>7.3f} {r['tokens_per_s']:>7.1f} {r['ttft_p50_s']:>9.3f} "
                  f"{r['ttft_p95_s']:>7.3f} {r['ttft_p99_s']:>7.3f} {r['e2e_p50_s']:>8.3f} {r['e2e_p95_s']:>7.3f} "
                  f"{r['e2e_p99_s']:>7.3f} {r['short_e2e_p50_s']:>9.3f} {r['refused']:>7}")
    saturated = [x for x in rates if res["batch"][x]["requests_per_s"] < 0.9 * res["batch"][x]["offered_per_s"]]
    sat = saturated[0] if saturated else rates[-1]  # where the per-batch server starts to fall behind
    top = rates[-1]  # the heaviest load: what each server can complete when both are offered more than they finish
    b, c = res["batch"][top], res["continuous"][top]
    onset = res["continuous"][sat]["requests_per_s"] / res["batch"][sat]["requests_per_s"]
    onset_cap = res["batch"][sat]["offered_per_s"] / res["batch"][sat]["requests_per_s"]
    low = rates[0]
    seconds = time.perf_counter() - t_start
    out = {"model": a.model, "dtype": a.dtype, "adapters": a.adapters, "max_batch": a.max_batch, "rates": rates,
           "prefix_cache": a.prefix_cache, "packed_weights": a.packed_weights,
           "requests_per_rate": a.requests, "short_tokens": a.short_tokens, "long_tokens": a.long_tokens,
           "results": {s: {str(k): v for k, v in d.items()} for s, d in res.items()}, "saturation_rate": sat,
           "compared_at_rate": top, "throughput_ratio_at_onset": round(onset, 3),
           "throughput_ratio_at_onset_bound": round(onset_cap, 3),
           "throughput_ratio": round(c["requests_per_s"] / b["requests_per_s"], 3),
           "ttft_p95_ratio": round(c["ttft_p95_s"] / b["ttft_p95_s"], 3),
           "low_load_e2e_p50_ratio": round(res["continuous"][low]["e2e_p50_s"] / res["batch"][low]["e2e_p50_s"], 3),
           "seconds": round(seconds, 1), "threads": a.threads, "cpus": os.cpu_count(),
           "load_average_at_start": round(load0, 2), "load_average_at_end": round(os.getloadavg()[0], 2),
           "machine": platform.processor() or platform.machine(), "date": time.strftime("%Y-%m-%d")}
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=1) + "\n")
        print(f"wrote {a.json}")
    print(f"{seconds:.0f} s in all; load average {load0:.1f} at the start, {out['load_average_at_end']:.1f} at the end, "
          f"{os.cpu_count()} CPUs")
    print(f"saturation rate (the per-batch server completes < 90% of it): {sat:g}/s"
          + ("" if res["batch"][sat]["requests_per_s"] < 0.9 * res["batch"][sat]["offered_per_s"]
             else " (not reached: the highest rate)"))
    print(f"at {sat:g}/s continuous/batch requests/s is {onset:.3f}, which cannot exceed {onset_cap:.3f} there (offered / "
          f"what the per-batch server completed: a server completes no more than it is offered); compared at {top:g}/s, "
          f"the heaviest load" + ("" if top in saturated else " (the per-batch server kept up even there)"))
    print(f"low_load_e2e_p50_ratio: {out['low_load_e2e_p50_ratio']:.3f}")
    print(f"throughput_ratio: {out['throughput_ratio']:.3f}")
    print(f"ttft_p95_ratio: {out['ttft_p95_ratio']:.3f}")

if __name__ == "__main__": main()
