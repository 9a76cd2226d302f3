"Deployment on loopback: a real uvicorn server on 127.0.0.1 over the tiny model with two adapters."
import json, os, signal, subprocess, sys, threading, time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
import pytest

httpx = pytest.importorskip("httpx")
torch = pytest.importorskip("torch")
from typer.testing import CliRunner
from finetune_kit.cli import app
from finetune_kit.settings import make_config
from finetune_kit.files import read_jsonl
from finetune_kit.models import load_model
from finetune_kit.adapters import apply_peft, save_adapter
from finetune_kit.deploy import (BackgroundServer, Engine, Router, ServeError, ServeSettings, load_adapters,
                                 load_engine, make_app, parse_split)
from conftest import starts
from helpers import BIN, free_port, tiny_adapter, tiny_config

runner = CliRunner()
PROMPTS = ["Classify: the market rallied and shares rose", "Classify: the striker scored twice",
           "Summarize: rain is expected on Monday", "Name a colour."]

def direct_answers(adapter, prompts, max_new_tokens):
    "Each prompt answered alone by `transformers` generate on base + adapter, loaded on its own (greedy, fp32)."
    from peft import PeftModel
    from finetune_kit.models import end_of_turn_id
    m, tok = load_model(tiny_config(dtype="float32"), progress=False)
    pm = PeftModel.from_pretrained(m, str(adapter)).eval()
    stops = sorted({end_of_turn_id(tok), *([tok.eos_token_id] if tok.eos_token_id is not None else [])})
    out = []
    for p in prompts:
        ids = tok(tok.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True, tokenize=False),
                  add_special_tokens=False, return_tensors="pt")
        with torch.inference_mode():
            g = pm.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=stops,
                            pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else stops[0])
        out.append(tok.decode(g[0, ids["input_ids"].shape[1]:], skip_special_tokens=True))
    return out

@pytest.fixture(scope="module")
def adapters(tmp_path_factory):
    import torch
    d = tmp_path_factory.mktemp("adapters")
    def made(name, seed):  # lora_A's init from the seed too, not from whatever earlier tests drew (a1 must run to its budget)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return tiny_adapter(d/name, seed)
    return {"a1": made("a1", 1), "a2": made("a2", 2)}

@pytest.fixture(scope="module")
def loaded(adapters):
    "`(model, tok, infos, stop_ids)`: the tiny base once, with both adapters."
    return load_adapters("tiny-test", adapters, {"dtype": "float32"}, progress=False)

@pytest.fixture
@starts("a uvicorn server on loopback")
def server(loaded, tmp_path):
    "A real server on a free loopback port: `server(max_batch=, max_queue=, splits=, engine={...}, **settings)` -> (url, engine)."
    started = []
    def start(max_batch=8, max_queue=64, splits=(), engine=None, **kw):
        eng = Engine(*loaded, "tiny-test", max_batch, max_queue, **(engine or {})).start()
        settings = ServeSettings(request_log=str(tmp_path/"requests.jsonl"),
                                 feedback_file=str(tmp_path/"feedback.jsonl"), **{"max_prompt_tokens": 200, **kw})
        srv = BackgroundServer(make_app(eng, settings, Router([parse_split(s) for s in splits], seed=0)))
        assert srv.url.startswith("http://127.0.0.1:")
        started.append((srv, eng))
        return srv.url, eng
    yield start
    for srv, eng in started: srv.close(); eng.close()

def chat(client, model, prompt, **kw):
    return client.post("/v1/chat/completions", json={"model": model, "messages": [{"role": "user", "content": prompt}],
                                                     **kw})

def test_concurrent_requests_to_two_adapters_get_their_own_answers(adapters, server):
    want = {n: direct_answers(p, PROMPTS, 10) for n, p in adapters.items()}
    assert want["a1"] != want["a2"]  # the check can tell the adapters apart
    url, eng = server()
    jobs = [(n, i) for i in range(len(PROMPTS)) for n in ("a1", "a2")] * 2  # 16 requests at once, adapters interleaved
    with httpx.Client(base_url=url, timeout=120) as c, ThreadPoolExecutor(16) as ex:
        rs = list(ex.map(lambda j: chat(c, j[0], PROMPTS[j[1]], max_tokens=10), jobs))
        health = c.get("/health").json()
    assert [r.status_code for r in rs] == [200] * len(jobs)
    assert [r.headers["x-adapter"] for r in rs] == [n for n, _ in jobs]
    assert [r.json()["choices"][0]["message"]["content"] for r in rs] == [want[n][i] for n, i in jobs]
    assert health["mixed_batches"] >= 1 and health["errors"] == 0  # the adapters shared batches
    assert health["packed_weights"]["used"] == "packed"  # on a CPU in float32 the server decodes with packed weights

def _wait_for(cond, seconds:float=60) -> bool:
    "Poll `cond` until it holds or `seconds` pass (a loaded CI machine can take seconds to schedule a request)."
    end = time.monotonic() + seconds
    while not cond() and time.monotonic() < end: time.sleep(0.01)
    return bool(cond())

def test_bad_requests_get_4xx_with_a_clear_message_and_the_server_keeps_serving(server):
    url, eng = server(max_batch=1, max_queue=1)
    ok = {"model": "a1", "messages": [{"role": "user", "content": PROMPTS[0]}], "max_tokens": 4}
    with httpx.Client(base_url=url, timeout=120) as c:
        post = lambda **kw: c.post("/v1/chat/completions", **kw)
        bad = {"unknown adapter": (post(json={**ok, "model": "gpt-5"}), 404, "does not exist"),
               "malformed JSON": (c.post("/v1/chat/completions", content=b'{"model": "a1", "messages": [',
                                         headers={"content-type": "application/json"}), 400, "not valid JSON"),
               "oversize prompt": (chat(c, "a1", "the market " * 300), 400, "this server takes at most 200"),
               "oversize body": (post(content=b"x" * 2_000_000), 413, "over this server's limit"),
               "no messages": (c.post("/v1/chat/completions", json={"model": "a1"}), 400, "'messages' is required")}
        for what, (r, status, msg) in bad.items():
            assert (r.status_code, msg in r.json()["error"]["message"]) == (status, True), (what, r.text)
        assert chat(c, "a2", PROMPTS[1], max_tokens=4).status_code == 200
        # too many concurrent requests: hold the engine's one decoding slot, fill its one queue place, ask once more
        # (`eng.running` still reads 1 for a moment after the request before: wait until the model holds this one)
        gate, inside = threading.Event(), threading.Event()
        def hold(module, args):  # the held request's forward waits here (returning None: its args unchanged)
            inside.set(); gate.wait(60)
        hook = eng.model.register_forward_pre_hook(hold)
        try:
            with ThreadPoolExecutor(2) as ex:
                held = ex.submit(chat, c, "a1", PROMPTS[0], max_tokens=4)
                assert inside.wait(60) and eng.running == 1, "the first request never took the decoding slot"
                queued = ex.submit(chat, c, "a2", PROMPTS[1], max_tokens=4)
                assert _wait_for(lambda: len(eng.pending) == 1), "the second request never reached the queue"
                busy = chat(c, "a1", PROMPTS[2], max_tokens=4)
                gate.set()
                assert (held.result().status_code, queued.result().status_code) == (200, 200)
        finally: gate.set(); hook.remove()
        assert (busy.status_code, busy.headers.get("retry-after")) == (429, "1")
        msg = busy.json()["error"]["message"]
        assert "the server is busy" in msg and "retry later" in msg, msg
        assert chat(c, "a1", PROMPTS[2], max_tokens=4).status_code == 200  # still serving
        assert c.get("/health").json()["status"] == "ok"

def test_every_request_is_logged_with_status(server, tmp_path):
    url, _ = server()
    with httpx.Client(base_url=url, timeout=120) as c:
        chat(c, "a1", PROMPTS[0], max_tokens=3); chat(c, "nope", PROMPTS[0])
    rows = read_jsonl(tmp_path/"requests.jsonl")
    assert [(r["model"], r["adapter"], r["status"]) for r in rows] == [("a1", "a1", 200), ("nope", None, 404)]
    assert rows[0]["latency_s"] > 0 and rows[0]["completion_tokens"] >= 1 and rows[0]["prompt_tokens"] > 1

def test_request_text_is_logged_only_when_asked_and_scrubbed(server, tmp_path):
    secret = "Classify: mail jane.doe@example.com about card 4111 1111 1111 1111"
    url, _ = server()
    with httpx.Client(base_url=url, timeout=120) as c: assert chat(c, "a1", secret, max_tokens=3).status_code == 200
    off = read_jsonl(tmp_path/"requests.jsonl")
    assert len(off) == 1 and "input" not in off[0] and "answer" not in off[0]  # off by default
    (tmp_path/"requests.jsonl").unlink()
    url, _ = server(log_text=True)
    with httpx.Client(base_url=url, timeout=120) as c:
        r = chat(c, "a1", secret, max_tokens=3).json()
        assert chat(c, "nope", secret).status_code == 404
    rows = read_jsonl(tmp_path/"requests.jsonl")
    assert [r["input"] for r in rows] == ["Classify: mail <EMAIL> about card <CARD>"] * 2
    from finetune_kit.data.curate import scrub_pii
    assert rows[0]["answer"] == scrub_pii(r["choices"][0]["message"]["content"])[0] and "answer" not in rows[1]

def test_an_adapter_trained_on_another_base_is_refused_at_load_with_both_names(adapters, tmp_path):
    from finetune_kit.testing import make_tiny_model
    wide = make_tiny_model(tmp_path/"tiny-wide", hidden_size=96)
    other = tiny_adapter(tmp_path/"other", 3, base=wide)
    with pytest.raises(ServeError) as e: load_engine("tiny-test", {"a1": adapters["a1"], "b": other}, progress=False)
    msg = str(e.value)
    assert "was trained on" in msg and str(wide) in msg and "tiny-test" in msg and "\n" not in msg, msg
    r = runner.invoke(app, ["serve", f"b={other}", "-p", "base_model", "tiny-test"])
    assert r.exit_code == 2 and r.output.startswith("error: adapter 'b'") and str(wide) in r.output, r.output

def test_the_ab_split_is_within_tolerance_of_the_set_share(server, tmp_path):
    share, n = 0.3, 300
    url, _ = server(splits=[f"support=a1,a2,{share}"])
    with httpx.Client(base_url=url, timeout=120) as c, ThreadPoolExecutor(8) as ex:
        rs = list(ex.map(lambda i: chat(c, "support", PROMPTS[i % 4], max_tokens=1, user=f"user{i}"), range(n)))
        again = [chat(c, "support", PROMPTS[0], max_tokens=1, user="user7").headers["x-arm"] for _ in range(5)]
    assert {r.status_code for r in rs} == {200}
    arms = [r.headers["x-arm"] for r in rs]
    assert all((a, r.headers["x-adapter"]) in {("current", "a1"), ("candidate", "a2")} for a, r in zip(arms, rs))
    got = arms.count("candidate") / n
    assert abs(got - share) < 4 * (share * (1 - share) / n) ** 0.5, got  # 4 standard errors: +-0.106
    assert set(again) == {arms[7]}  # sticky by user
    logged = [r["arm"] for r in read_jsonl(tmp_path/"requests.jsonl") if r.get("model") == "support"]
    assert logged.count("candidate") == arms.count("candidate") + 5 * (arms[7] == "candidate")

def test_a_feedback_record_round_trips_into_data_prepare(server, tmp_path, run_cli):
    url, _ = server(splits=["support=a1,a2,0.5"])
    with httpx.Client(base_url=url, timeout=120) as c:
        r1 = chat(c, "support", PROMPTS[0], max_tokens=4, user="u1").json()
        r2 = chat(c, "a2", PROMPTS[1], max_tokens=4).json()
        r3 = chat(c, "a1", PROMPTS[2], max_tokens=4).json()
        fb = [c.post("/v1/feedback", json={"request_id": r1["id"], "rating": -1, "correction": "business"}),
              c.post("/v1/feedback", json={"request_id": r2["id"], "rating": 1}),
              c.post("/v1/feedback", json={"request_id": r3["id"], "rating": -1})]  # nothing to learn: no record
        missing = c.post("/v1/feedback", json={"request_id": "chatcmpl-nope", "rating": 1})
        bad = c.post("/v1/feedback", json={"request_id": r1["id"], "rating": 5})
    assert [f.json()["training_record"] for f in fb] == [True, True, False]  # an SFT record: an answer to learn
    assert all(f.json()["kept"] for f in fb)  # every rating is kept whole (KTO, DPO pairs)
    assert (missing.status_code, bad.status_code) == (404, 400) and "from -1" in bad.json()["error"]["message"]
    recs = read_jsonl(tmp_path/"feedback.jsonl")
    assert [(r["request_id"], r["rating"], r["correction"]) for r in recs] == [(r1["id"], -1, "business"),
                                                                             (r2["id"], 1, None), (r3["id"], -1, None)]
    assert [r["completion"] for r in recs] == [r["choices"][0]["message"]["content"] for r in (r1, r2, r3)]
    p = run_cli("data", "prepare", tmp_path/"feedback.jsonl", "--out", tmp_path/"data", "-p", "task", "chat",
                "-p", "val_size", "0", "-p", "test_size", "0", "-p", "pii_scrub", "no")
    assert p.returncode == 0, p.stderr
    train = read_jsonl(tmp_path/"data"/"train.jsonl")
    from finetune_kit.data.curate import clean_text  # what the data stage does to every text (control characters...)
    got = {r["meta"]["request_id"]: (r["prompt"][-1]["content"], r["completion"][0]["content"]) for r in train}
    served = clean_text(r2["choices"][0]["message"]["content"])[0]  # the tiny random model's answer, as cleaned
    assert got == {r1["id"]: (PROMPTS[0], "business"), r2["id"]: (PROMPTS[1], served)}
    assert {r["meta"]["request_id"]: r["meta"]["rating"] for r in train} == {r1["id"]: -1, r2["id"]: 1}
    assert json.loads((tmp_path/"data"/"data.json").read_text())["counts"]["rejected_by_reason"] == {"missing_field": 1}
    log = read_jsonl(tmp_path/"requests.jsonl")
    assert sum(r.get("event") == "feedback" for r in log) == 3  # every rating is logged, records or not
    # the same file is KTO's data as it is: every served answer with its rating
    p = run_cli("data", "prepare", tmp_path/"feedback.jsonl", "--out", tmp_path/"ratings", "-p", "task",
                "unpaired_preference", "-p", "val_size", "0", "-p", "test_size", "0", "-p", "pii_scrub", "no")
    assert p.returncode == 0, p.stderr
    rated = {r["meta"]["request_id"]: r["label"] for r in read_jsonl(tmp_path/"ratings"/"train.jsonl")}
    assert rated == {r1["id"]: False, r2["id"]: True, r3["id"]: False}
    # ... and KTO trains on it: serve -> /v1/feedback -> data prepare -> train -p objective kto
    p = run_cli("train", "-p", "objective", "kto", "-p", "task", "unpaired_preference", "-p", "data_dir",
                tmp_path/"ratings", "-p", "base_model", "tiny-test", "-p", "max_steps", "2", "-p", "runs_dir",
                tmp_path/"runs", "-p", "run_id", "kto", "-p", "report_to", "none", "-p", "logging_steps", "1")
    assert p.returncode == 0, p.stderr[-3000:]
    logged = [json.loads(l) for l in (tmp_path/"runs"/"kto"/"metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged if "loss" in r] == [1, 2] and any("rewards/chosen" in r for r in logged)

def test_a_corrupted_merge_fails_export_and_leaves_nothing_written(adapters, tmp_path, monkeypatch):
    import finetune_kit.adapters as M
    good = M.merge_adapter
    def scale_twice(model):  # the LoRA scale applied twice: a real class of merge bug
        for m in model.modules():
            if isinstance(getattr(m, "scaling", None), dict): m.scaling = {k: 2 * v for k, v in m.scaling.items()}
        return good(model)
    monkeypatch.setattr(M, "merge_adapter", scale_twice)
    out = tmp_path/"exports"/"merged"
    r = runner.invoke(app, ["export", str(adapters["a1"]), "--out", str(out), "--no-progress"])
    assert r.exit_code == 2, r.output
    assert r.output.startswith("error: export check failed:") and r.output.endswith("nothing was written\n"), r.output
    assert r.output.count("\n") == 1
    assert not out.exists() and list(out.parent.iterdir()) == []  # no temporary folder either
    monkeypatch.setattr(M, "merge_adapter", good)
    r = runner.invoke(app, ["export", str(adapters["a1"]), "--out", str(out), "--no-progress", "--dtype", "float32"])
    assert r.exit_code == 0, r.output
    rep = json.loads((out/"export.json").read_text())
    assert rep["ok"] and rep["rel_diff"] <= rep["tolerance"] == 1e-4 and rep["greedy_agree"] == rep["probes"]
    assert {p.name for p in out.iterdir()} >= {"model.safetensors", "config.json", "generation_config.json",
                                              "tokenizer_config.json", "export.json"}

def test_serve_with_vllm_dry_run_prints_the_command(adapters):
    r = runner.invoke(app, ["serve", f"a1={adapters['a1']}", f"a2={adapters['a2']}", "--engine", "vllm", "--dry-run",
                            "--port", "8001"])
    assert r.exit_code == 0, r.output
    import shlex
    cmd = shlex.split(r.output)
    assert cmd[:2] == ["vllm", "serve"] and "--enable-lora" in cmd
    assert cmd[cmd.index("--max-lora-rank") + 1] == "8" and cmd[cmd.index("--max-loras") + 1] == "2"
    assert cmd[cmd.index("--port") + 1] == "8001"
    mods = [json.loads(m) for m in cmd[cmd.index("--lora-modules") + 1:]]
    assert [(m["name"], m["path"]) for m in mods] == [("a1", str(adapters["a1"])), ("a2", str(adapters["a2"]))]
    r = runner.invoke(app, ["serve", f"a1={adapters['a1']}", "--dry-run"])
    assert (r.exit_code, r.output) == (2, "error: --dry-run is for --engine vllm\n")
    r = runner.invoke(app, ["serve", f"a1={adapters['a1']}", "--engine", "vllm", "--ab", "x=a1,a1,0.5", "--dry-run"])
    assert r.exit_code == 2 and "--ab needs the kit's server" in r.output

@pytest.mark.slow  # the serve command: a Python process with a server
def test_the_serve_command_serves_and_monitor_reads_its_log(adapters, tmp_path):
    port, log = free_port(), tmp_path/"requests.jsonl"
    p = subprocess.Popen([str(BIN/"finetune-kit"), "serve", f"a1={adapters['a1']}", f"a2={adapters['a2']}", "--port",
                          str(port), "--ab", "support=a1,a2,0.5", "--log", str(log), "--feedback",
                          str(tmp_path/"fb.jsonl"), "-p", "dtype", "float32"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(600):
            if p.poll() is not None: pytest.fail(p.stderr.read())
            try:
                if httpx.get(url + "/health").status_code == 200: break
            except httpx.TransportError: time.sleep(0.1)
        with httpx.Client(base_url=url, timeout=120) as c:
            ids = [m["id"] for m in c.get("/v1/models").json()["data"]]
            rs = [chat(c, "support", PROMPTS[i % 4], max_tokens=3, user=f"u{i}") for i in range(40)]
            assert chat(c, "gpt-5", PROMPTS[0]).status_code == 404
    finally:
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=60)
    assert ids == ["tiny-test", "a1", "a2", "support"] and {r.status_code for r in rs} == {200}
    assert out.startswith(f"serving tiny-test with adapters a1, a2 on http://127.0.0.1:{port}/v1"), out
    r = runner.invoke(app, ["monitor", str(log), "--resamples", "200"])
    assert r.exit_code == 0, r.output
    assert "## A/B: candidate - current" in r.output and (tmp_path/"monitor"/"monitor.png").is_file()
    r = runner.invoke(app, ["monitor", str(tmp_path/"nope.jsonl")])
    assert (r.exit_code, r.output) == (2, f"error: {tmp_path/'nope.jsonl'}: no such request log\n")

@pytest.mark.parametrize("scheduler", ["continuous", "batch"])
def test_a_server_batch_and_evaluation_give_identical_greedy_answers(loaded, scheduler):
    "One engine: the server's batches (adapters and the base mixed) answer as evaluation's `generate` does, per adapter."
    from finetune_kit.engine import generate
    model, tok, infos, stops = loaded
    names = ["a1", "a2", "tiny-test"]
    eng = Engine(*loaded, "tiny-test", max_batch=12, scheduler=scheduler).start()
    try:
        with ThreadPoolExecutor(12) as ex:
            got = list(ex.map(lambda j: eng.answer([{"role": "user", "content": PROMPTS[j[1]]}], j[0], max_tokens=10),
                              [(n, i) for n in names for i in range(len(PROMPTS))]))
        assert eng.stats["mixed_batches"] >= 1 and eng.stats["errors"] == 0
    finally: eng.close()
    msgs = [[{"role": "user", "content": p}] for p in PROMPTS]
    want = {}
    for n in ("a1", "a2"):
        model.set_adapter(n)
        want[n] = generate(model, tok, msgs, max_new_tokens=10, progress=False)
    with model.disable_adapter(): want["tiny-test"] = generate(model, tok, msgs, max_new_tokens=10, progress=False)
    model.set_adapter("a1")
    assert len({tuple(w) for w in want.values()}) == 3  # the three models answer differently
    assert [g["text"].strip() for g in got] == [a for n in names for a in want[n]]  # evaluation strips its answers


# --- continuous batching ---------------------------------------------------------------------------------------------

def alone_answers(loaded, asks):
    "Each `(adapter or None, prompt, max_tokens)` answered on its own by evaluation's `engine.generate` (greedy)."
    from finetune_kit.engine import generate
    model, tok = loaded[0], loaded[1]
    out = []
    for adapter, prompt, k in asks:
        msgs = [[{"role": "user", "content": prompt}]]
        if adapter is None:
            with model.disable_adapter(): out.append(generate(model, tok, msgs, max_new_tokens=k, progress=False)[0])
        else:
            model.set_adapter(adapter)
            out.append(generate(model, tok, msgs, max_new_tokens=k, progress=False)[0])
    model.set_adapter("a1")
    return out

class Forwards:
    "A forward pre-hook on the engine's model: counts forwards, sleeps `pause` s in each, and before forward `hold_at`"
    " waits until `until()` holds (the engine thread stops there while the test arranges arrivals)."
    def __init__(self, model, pause=0.0, hold_at=None, until=None):
        self.n, self.pause, self.hold_at, self.until = 0, pause, hold_at, until
        self.handle = model.register_forward_pre_hook(self)
    def __call__(self, module, args):
        self.n += 1
        if self.n == self.hold_at: assert _wait_for(self.until), "the held engine never saw the arrivals"
        if self.pause: time.sleep(self.pause)
    def remove(self): self.handle.remove()

def test_short_requests_arriving_while_a_long_one_runs_finish_before_it_with_their_alone_answers(loaded, server,
                                                                                                  tmp_path):
    long_ask = ("a1", PROMPTS[0], 60)  # a1's answers run to their budget on the tiny model
    shorts = [("a2", PROMPTS[1], 6), (None, PROMPTS[2], 6), ("a1", PROMPTS[3], 6), ("a2", PROMPTS[0], 6)]
    want = alone_answers(loaded, [long_ask] + shorts)
    url, eng = server(max_batch=8)
    assert eng.scheduler == "continuous"
    # the long request's third forward waits until the short ones are queued: they arrive while it decodes
    hook = Forwards(eng.model, hold_at=3, until=lambda: len(eng.pending) == len(shorts))
    def ask(a):
        with httpx.Client(base_url=url, timeout=300) as c: return chat(c, a[0] or "tiny-test", a[1], max_tokens=a[2])
    try:
        with ThreadPoolExecutor(len(shorts) + 1) as ex:
            long_r = ex.submit(ask, long_ask)
            assert _wait_for(lambda: hook.n >= 2), "the long request never started"
            short_rs = [ex.submit(ask, a) for a in shorts]
            rs = [long_r.result()] + [f.result() for f in short_rs]
    finally: hook.remove()
    assert [r.status_code for r in rs] == [200] * len(rs)
    done = [row["completion_tokens"] for row in read_jsonl(tmp_path/"requests.jsonl")]  # the server's order of answers
    assert len(done) == len(shorts) + 1 and done[-1] == 60 and max(done[:-1]) <= 6, done  # the long one answered last
    assert [r.json()["choices"][0]["message"]["content"].strip() for r in rs] == want  # evaluation strips its answers
    assert eng.stats["batches"] >= 2 and eng.stats["mixed_batches"] >= 1 and eng.stats["errors"] == 0

def test_answers_are_the_alone_answers_at_any_arrival_pattern(loaded, server):
    "Requests at random moments (seeded), mixed adapters and budgets: each answer is the one it gets alone."
    import random
    rng = random.Random(7)
    asks = [(rng.choice(["a1", "a2", None]), rng.choice(PROMPTS), rng.choice([3, 8, 20])) for _ in range(12)]
    gaps = [rng.expovariate(1 / 0.05) for _ in asks]
    want = alone_answers(loaded, asks)
    url, eng = server(max_batch=4, engine={"max_join": 2})
    def ask(a):
        with httpx.Client(base_url=url, timeout=300) as c: return chat(c, a[0] or "tiny-test", a[1], max_tokens=a[2])
    with ThreadPoolExecutor(len(asks)) as ex:
        fs = []
        for a, g in zip(asks, gaps): time.sleep(g); fs.append(ex.submit(ask, a))
        rs = [f.result() for f in fs]
    assert [r.json()["choices"][0]["message"]["content"].strip() for r in rs] == want
    assert _wait_for(lambda: eng.stats["served"] == len(asks)) and eng.stats["errors"] == 0
    assert set(eng._prefixes) == {a[0] for a in asks} and all(eng._prefixes.values())  # the template's cache, per adapter

def test_a_client_that_disconnects_mid_stream_frees_its_slot(server, tmp_path):
    url, eng = server(max_batch=1)
    slow = Forwards(eng.model, pause=0.05)  # 400 tokens would take 20 s at least
    try:
        with httpx.Client(base_url=url, timeout=120) as c:
            body = {"model": "a1", "messages": [{"role": "user", "content": PROMPTS[0]}], "max_tokens": 400,
                    "stream": True}
            with c.stream("POST", "/v1/chat/completions", json=body) as s:
                pieces = 0
                for line in s.iter_lines():
                    pieces += line.startswith("data: ") and '"content": "' in line and '"content": ""' not in line
                    if pieces >= 2: break  # leave mid-answer: the connection closes with the block
            assert _wait_for(lambda: eng.stats["cancelled"] == 1 and eng.running == 0, 120), eng.stats
            made = slow.n
            assert made < 200, made  # the row left long before its budget
            r = chat(c, "a2", PROMPTS[1], max_tokens=3)  # the one slot is free again
    finally: slow.remove()
    assert r.status_code == 200
    rows = read_jsonl(tmp_path/"requests.jsonl")
    assert [x["status"] for x in rows] == [499, 200] and rows[0]["error"] == "client closed the connection"

def test_a_request_that_cannot_fit_the_context_is_refused_before_it_takes_a_slot(server):
    url, eng = server(max_batch=1, max_queue=1, max_tokens=1000)
    ctx = eng.context_len
    assert ctx == 1024
    gate, inside = threading.Event(), threading.Event()
    def hold(module, args): inside.set(); gate.wait(60)
    hook = eng.model.register_forward_pre_hook(hold)
    try:
        with httpx.Client(base_url=url, timeout=120) as c, ThreadPoolExecutor(2) as ex:
            held = ex.submit(chat, c, "a1", PROMPTS[0], max_tokens=4)
            assert inside.wait(60)
            queued = ex.submit(chat, c, "a2", PROMPTS[1], max_tokens=4)
            assert _wait_for(lambda: len(eng.pending) == 1)
            long_prompt = "the market " * 10  # 73 tokens: within max_prompt_tokens (200)
            n = len(eng.render([{"role": "user", "content": long_prompt}]))
            assert n + 1000 > ctx >= n + 100
            big = chat(c, "a1", long_prompt, max_tokens=1000)  # the slot and the queue are full: yet 400, not 429
            fits = chat(c, "a1", long_prompt, max_tokens=100)  # a request that fits is turned away as busy
            gate.set()
            assert (held.result().status_code, queued.result().status_code) == (200, 200)
    finally: gate.set(); hook.remove()
    assert (big.status_code, big.json()["error"]["code"], fits.status_code) == (400, "context_length_exceeded", 429)
    msg = big.json()["error"]["message"]
    assert f"the prompt has {n} tokens and max_tokens is 1000" in msg and f"at most {ctx - n} new tokens" in msg, msg
    assert _wait_for(lambda: eng.stats["served"] == 2) and not eng.pending  # the refused ones never reached it

def test_the_openai_client_chats_streams_and_lists_models(server):
    openai = pytest.importorskip("openai")
    url, eng = server(max_tokens=2000)
    client = openai.OpenAI(base_url=url + "/v1", api_key="not-needed", max_retries=0)
    assert [m.id for m in client.models.list()] == ["tiny-test", "a1", "a2"]
    msgs = [{"role": "user", "content": PROMPTS[0]}]
    r = client.chat.completions.create(model="a2", messages=msgs, max_tokens=8)
    want = eng.answer(msgs, "a2", max_tokens=8)
    assert (r.choices[0].message.content, r.choices[0].finish_reason) == (want["text"], want["finish_reason"])
    assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (want["prompt_tokens"], want["completion_tokens"])
    chunks = list(client.chat.completions.create(model="a2", messages=msgs, max_tokens=8, stream=True,
                                                 stream_options={"include_usage": True}))
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices) == want["text"]
    assert chunks[-1].usage.completion_tokens == want["completion_tokens"]
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        client.chat.completions.create(model="gpt-5", messages=msgs)
    with pytest.raises(openai.BadRequestError, match="context"):
        client.chat.completions.create(model="a1", messages=msgs, max_tokens=2000)

def test_the_openai_client_retrieves_a_model_and_an_unknown_id_is_openai_s_404(adapters, server):
    openai = pytest.importorskip("openai")
    url, _ = server(splits=["support=a1,a2,0.5"])
    client = openai.OpenAI(base_url=url + "/v1", api_key="not-needed", max_retries=0)
    listed = {m.id: m.model_dump(exclude={"created"}) for m in client.models.list()}
    assert list(listed) == ["tiny-test", "a1", "a2", "support"]
    for name, want in listed.items():  # each one as the list shows it
        assert client.models.retrieve(name).model_dump(exclude={"created"}) == want
    a1 = client.models.retrieve("a1")
    assert (a1.object, a1.owned_by, a1.model_extra["parent"], a1.model_extra["root"]) == (
        "model", "finetune-kit", "tiny-test", str(adapters["a1"]))
    for unknown in ("gpt-5", "tiny-test/a1"):  # a slash (sent as %2F) reaches the same route
        with pytest.raises(openai.NotFoundError, match="does not exist") as e: client.models.retrieve(unknown)
        assert (e.value.status_code, e.value.code, e.value.param, e.value.type) == (
            404, "model_not_found", "model", "invalid_request_error")
    r = httpx.get(url + "/v1/models/gpt-5")
    assert r.status_code == 404 and list(r.json()) == ["error"]
    assert set(r.json()["error"]) == {"message", "type", "param", "code"}
