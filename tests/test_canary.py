"Canary releases: the rule on simulated rows, and a real `finetune-kit serve --canary` process on 127.0.0.1."
import json, random, signal, subprocess, time
from pathlib import Path
import pytest

httpx = pytest.importorskip("httpx")
from typer.testing import CliRunner
from finetune_kit.cli import app
from finetune_kit.files import read_jsonl
from finetune_kit.deploy import ARMS, Canary, CanaryRule, Router
from conftest import starts
from helpers import BIN, free_port, tiny_adapter

runner = CliRunner()
ASK = "Classify: the market rallied and shares rose"


@pytest.fixture(scope="module")
def adapters(tmp_path_factory):
    "A current adapter, a sound candidate, and a broken one (NaN weights: every sampled answer fails)."
    from safetensors.torch import load_file, save_file
    d = tmp_path_factory.mktemp("adapters")
    out = {"v1": tiny_adapter(d/"v1", 1), "v2": tiny_adapter(d/"v2", 2), "broken": tiny_adapter(d/"broken", 3)}
    f = Path(out["broken"])/"adapter_model.safetensors"
    w = load_file(f)
    save_file({k: (v * float("nan") if "lora_B" in k else v) for k, v in w.items()}, f)  # a real class of bad export
    return out


def test_the_rule_decides_once_per_step_on_its_fixed_sample(tmp_path):
    t = [0.0]
    router = Router(seed=0)
    c = Canary("support", "v1", "v2", router, CanaryRule(steps=(0.2, 0.5), min_requests=20, min_seconds=30,
                                                          n_resamples=300), tmp_path/"canary.jsonl", clock=lambda: t[0])
    rng = random.Random(0)
    for i in range(400):
        t[0] += 0.05  # 20 s for 400 requests: the samples fill before the step's 30 s
        adapter, arm = router.route("support", f"u{rng.randrange(10**6)}")
        c.observe({"id": f"r{i}", "model": "support", "arm": arm, "status": 500 if arm == "candidate" else 200,
                   "latency_s": 0.1})
    assert (c.state, c.status()["sample"]) == ("running", {"current": 20, "candidate": 20})  # the sample stops at 20
    t[0] += 15
    c.observe({"id": "late", "model": "support", "arm": "current", "status": 200, "latency_s": 0.1})
    log = read_jsonl(tmp_path/"canary.jsonl")
    assert [d["action"] for d in log] == ["start", "rollback"] and c.state == "rolled_back"
    ev = log[-1]["evidence"]["server_error_rate"]
    assert (ev["n_current"], ev["n_candidate"], ev["candidate"], ev["worse"]) == (20, 20, 1.0, True)
    assert log[-1]["share"] == 0.0 and max(d["share"] for d in log[:-1]) == 0.2
    assert {router.route("support", f"u{i}")[1] for i in range(50)} == {"current"}


def test_a_canary_on_another_base_is_refused_at_start(adapters, tmp_path):
    from finetune_kit.testing import make_tiny_model
    wide = make_tiny_model(tmp_path/"tiny-wide", hidden_size=96)
    other = tiny_adapter(tmp_path/"other", 3, base=wide)
    r = runner.invoke(app, ["serve", f"v1={adapters['v1']}", "--canary", f"v1={other}", "-p", "dtype", "float32"])
    assert r.exit_code == 2 and r.output.startswith("error: adapter 'v1-canary'") and str(wide) in r.output, r.output
    assert r.output.count("\n") == 1
    r = runner.invoke(app, ["serve", f"v1={adapters['v1']}", "--canary", f"v9={adapters['v2']}"])
    assert r.exit_code == 2 and "'v9' is not a served adapter" in r.output, r.output
    r = runner.invoke(app, ["serve", f"v1={adapters['v1']}", "--canary", f"v1={adapters['v2']}",
                            "--canary-steps", "0.5,0.1"])
    assert r.exit_code == 2 and "rising shares" in r.output, r.output


@pytest.fixture
@starts("a finetune-kit serve process on loopback")
def serve_process(tmp_path):
    "`start(*args)`: `finetune-kit serve *args` on a free loopback port, logs in tmp_path; its URL once healthy."
    procs = []
    def start(*args):
        port = free_port()
        p = subprocess.Popen([str(BIN/"finetune-kit"), "serve", *map(str, args), "--port", str(port), "--log",
                              str(tmp_path/"requests.jsonl"), "--feedback", str(tmp_path/"feedback.jsonl"),
                              "-p", "dtype", "float32"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        procs.append(p)
        url = f"http://127.0.0.1:{port}"
        for _ in range(3000):
            if p.poll() is not None: pytest.fail(p.stderr.read())
            try:
                if httpx.get(url + "/health").status_code == 200: return url
            except httpx.TransportError: time.sleep(0.2)
        pytest.fail("the server did not come up")
    yield start
    for p in procs:
        p.send_signal(signal.SIGINT)
        p.communicate(timeout=120)


def _traffic(c, n, rate, stop=lambda: False, start=0):
    "`n` users' requests for v1 (sampled answers), each rated by `rate(arm)`; the responses' (user, arm, status)."
    seen = []
    for i in range(start, start + n):
        r = c.post("/v1/chat/completions", json={"model": "v1", "user": f"user{i % 150}", "max_tokens": 2,
                                                 "temperature": 1.0, "seed": i,
                                                 "messages": [{"role": "user", "content": ASK}]})
        arm = r.headers.get("x-arm")
        seen.append((f"user{i % 150}", arm, r.status_code))
        if r.status_code == 200 and (x := rate(arm)) is not None:
            c.post("/v1/feedback", json={"request_id": r.json()["id"], "rating": x})
        if stop(): break
    return seen


def _state(c): return c.get("/v1/canary").json()["data"][0]


def test_a_broken_candidate_is_rolled_back_before_its_share_passes_the_first_step(adapters, serve_process, tmp_path):
    url = serve_process(f"v1={adapters['v1']}", "--canary", f"v1={adapters['broken']}", "--canary-steps", "0.2,0.5",
                        "--canary-min-requests", "15", "--canary-min-seconds", "0")
    with httpx.Client(base_url=url, timeout=300) as c:
        # a person pins it first: no decision while pinned, however bad the sample
        r = runner.invoke(app, ["canary", "pin", "v1", "--url", url, "--reason", "look first"])
        assert r.exit_code == 0 and "v1: pinned, candidate v1-canary at share 0.2" in r.output, r.output
        pinned = _traffic(c, 60, lambda arm: 1)
        assert _state(c)["state"] == "pinned" and any(a == "candidate" and s == 500 for _, a, s in pinned)
        assert runner.invoke(app, ["canary", "unpin", "v1", "--url", url]).exit_code == 0
        seen = _traffic(c, 400, lambda arm: 1, stop=lambda: _state(c)["state"] != "running", start=60)
        final = _state(c)
        after = _traffic(c, 20, lambda arm: None, start=1000)
        r = runner.invoke(app, ["canary", "promote", "v1", "--url", url])
    assert final["state"] == "rolled_back", final
    assert r.exit_code == 2 and "has ended (rolled back)" in r.output, r.output
    log = read_jsonl(tmp_path/"canary.jsonl")
    assert [(d["action"], d["by"]) for d in log] == [("start", "rule"), ("pin", "human"), ("unpin", "human"),
                                                      ("rollback", "rule")]
    assert max(d["share"] for d in log) == 0.2 and log[-1]["share"] == 0.0  # never past the first step
    ev = log[-1]["evidence"]["server_error_rate"]
    assert ev["worse"] and ev["candidate"] == 1.0 and ev["n_candidate"] == 15, ev
    assert {(a, s) for _, a, s in after} == {("current", 200)}  # everyone back on the current adapter
    assert sum(a == "candidate" for _, a, _ in seen) >= 15
    m = runner.invoke(app, ["monitor", str(tmp_path/"requests.jsonl"), "--resamples", "200"])
    assert m.exit_code == 0 and "## Canary decisions" in m.output and (tmp_path/"monitor"/"canary.png").is_file()
    print("\n".join(f"{d['time'] - log[0]['time']:7.1f}s {d['action']:8} by {d['by']:5} share {d['share']:.2f}: "
                    f"{d['reason']}" for d in log))


def test_a_better_candidate_is_promoted_and_users_keep_their_arm(adapters, serve_process, tmp_path):
    url = serve_process(f"v1={adapters['v1']}", "--canary", f"v1={adapters['v2']}", "--canary-steps", "0.2,0.5",
                        "--canary-min-requests", "15", "--canary-min-seconds", "0", "--canary-min-feedback", "10",
                        "--log-text")
    like = {"candidate": 1, "current": -1}  # users rate the candidate's answers well, the current's badly
    with httpx.Client(base_url=url, timeout=300) as c:
        seen = _traffic(c, 600, lambda arm: like[arm], stop=lambda: _state(c)["state"] != "running")
        final = _state(c)
    assert final["state"] == "promoted", final
    log = read_jsonl(tmp_path/"canary.jsonl")
    assert [d["action"] for d in log] == ["start", "advance", "promote"]
    assert [d["share"] for d in log] == [0.2, 0.5, 1.0]
    for d in log[1:]:
        ev = d["evidence"]["negative_feedback_rate"]
        assert ev["change"] < 0 and ev["n_candidate"] >= 10 and not any(e["worse"] for e in d["evidence"].values())
    first = {}
    for user, arm, status in seen[:-1]:  # the last request may have been answered after the promotion
        assert first.setdefault(user, arm) == arm, user  # sticky: a user's arm never changed while the share rose
    rows = read_jsonl(tmp_path/"requests.jsonl")
    assert all(r["input"] == ASK for r in rows if "event" not in r)  # --log-text
    print("\n".join(f"{d['time'] - log[0]['time']:7.1f}s {d['action']:8} by {d['by']:5} share {d['share']:.2f}: "
                    f"{d['reason']}" for d in log))


def test_a_candidate_that_answers_worse_on_labelled_traffic_is_rolled_back_on_the_task_metric(adapters, serve_process,
                                                                                              tmp_path):
    "Feedback with the right answer (`reference`): the candidate is as fast, as sound and as well rated, but wrong."
    url = serve_process(f"v1={adapters['v1']}", f"prod={adapters['v1']}", "--canary", f"v1={adapters['v2']}",
                        "--canary-steps", "0.3,0.6", "--canary-min-requests", "30", "--canary-min-seconds", "0",
                        "--canary-min-labelled", "20", "--canary-min-feedback", "20")
    asks = [f"Classify: story {i} about markets" for i in range(16)]
    greedy = lambda model, q, user="ref": {"model": model, "user": user, "max_tokens": 6, "temperature": 0,
                                           "messages": [{"role": "user", "content": q}]}
    with httpx.Client(base_url=url, timeout=300) as c:
        # the right answers: what the production adapter says (served beside the canary as `prod`, no split on it)
        right = {q: c.post("/v1/chat/completions", json=greedy("prod", q)).json()["choices"][0]["message"]["content"]
                 for q in asks}
        asks = [q for q in asks if right[q].strip()][:8]  # a random model may say nothing; a reference is some text
        assert len(asks) >= 4, right
        bad = c.post("/v1/feedback", json={"request_id": "nope", "rating": 0, "reference": 5})
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "reference", bad.text
        arms, i = [], 0
        while _state(c)["state"] == "running" and i < 600:
            q = asks[i % len(asks)]
            r = c.post("/v1/chat/completions", json=greedy("v1", q, f"user{i}"))
            assert r.status_code == 200, r.text
            arms.append((r.headers["x-arm"], r.json()["choices"][0]["message"]["content"] == right[q]))
            f = c.post("/v1/feedback", json={"request_id": r.json()["id"], "rating": 0, "reference": right[q]})
            assert f.status_code == 200, f.text
            i += 1
        final = _state(c)
    # the candidate's weights differ: its greedy answers are not production's (else this test shows nothing)
    cand = [ok for a, ok in arms if a == "candidate"]
    assert all(ok for a, ok in arms if a == "current") and sum(cand) <= len(cand) / 2, arms
    assert final["state"] == "rolled_back", final
    log = read_jsonl(tmp_path/"canary.jsonl")
    assert [d["action"] for d in log] == ["start", "rollback"] and max(d["share"] for d in log) == 0.3
    ev = log[-1]["evidence"]
    assert log[-1]["reason"] == "worse beyond the margin on task_metric", log[-1]["reason"]
    assert not any(ev[m]["worse"] for m in ("server_error_rate", "negative_feedback_rate"))
    t = ev["task_metric"]
    assert (t["task"], t["metric"], t["current"]) == ("prompt_completion", "token_f1", 1.0) and t["ci_high"] < -0.05, t
    assert t["n_current"] >= 20 and t["n_candidate"] >= 20
    kept = read_jsonl(tmp_path/"feedback.jsonl")  # the right answers are kept with the ratings; the log holds no text
    assert len(kept) == i and all(k["reference"] == right[k["prompt"][-1]["content"]] for k in kept)
    events = [r for r in read_jsonl(tmp_path/"requests.jsonl") if r.get("event") == "feedback"]
    assert all(e["labelled"] and "reference" not in e and "answer" not in e for e in events)
    print(f"\nrolled back after {i} requests: token F1 current {t['current']:.3f}, candidate {t['candidate']:.3f}, "
          f"change {t['change']:+.3f} [{t['ci_low']:+.3f}, {t['ci_high']:+.3f}]")
