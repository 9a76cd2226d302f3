"""Reliability of `serve` (issue 24, the HTTP items): a client that leaves is noticed, one rating per answer, bodies of any
shape never give a 5xx, OpenAI parameters are honoured or refused, 404s in OpenAI's shape, SIGTERM stops a streaming
server promptly.

In-process tests use FastAPI's TestClient on the app over the tiny model; those that need a real socket or process are
marked slow."""
import json, os, signal, subprocess, sys, textwrap, threading, time
import pytest
httpx = pytest.importorskip("httpx")
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, example, given, settings as hsettings, strategies as st

from finetune_kit.deploy import BackgroundServer, ServeSettings, load_engine, make_app
from finetune_kit.files import read_jsonl
from helpers import free_port

GOOD = {"model": "tiny-test", "messages": [{"role": "user", "content": "Classify: the striker scored twice"}],
        "max_tokens": 2}

def _wait_for(cond, seconds:float=60) -> bool:
    end = time.monotonic() + seconds
    while not cond() and time.monotonic() < end: time.sleep(0.01)
    return bool(cond())

def _openai_error(r, status:int) -> dict:
    "The error object of `r`, checked to be OpenAI's shape with `status`."
    assert r.status_code == status, (r.status_code, r.text[:300])
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and isinstance(err["message"], str) and err["message"], err
    return err

@pytest.fixture(scope="module")
def engine():
    eng = load_engine("tiny-test", {}, {"dtype": "float32"}, max_batch=2, progress=False)
    yield eng
    eng.close()

@pytest.fixture
def client(engine, tmp_path):
    app = make_app(engine, ServeSettings(request_log=str(tmp_path/"requests.jsonl"),
                                         feedback_file=str(tmp_path/"feedback.jsonl")))
    with TestClient(app, raise_server_exceptions=False) as c: yield c


# --- feedback -----------------------------------------------------------------------------------------------------

def test_a_second_rating_of_one_request_is_refused_409_and_the_feedback_rate_stays_at_most_1(client, tmp_path):
    from finetune_kit.deploy import monitor_table, read_log
    rid = client.post("/v1/chat/completions", json=GOOD).json()["id"]
    first = client.post("/v1/feedback", json={"request_id": rid, "rating": 1})
    again = client.post("/v1/feedback", json={"request_id": rid, "rating": -1, "correction": "sport"})
    assert first.status_code == 200
    assert _openai_error(again, 409)["code"] == "feedback_exists"
    assert len(read_jsonl(tmp_path/"feedback.jsonl")) == 1
    rows = read_jsonl(tmp_path/"requests.jsonl")
    assert [r.get("event") for r in rows].count("feedback") == 1
    table = monitor_table(*read_log(tmp_path/"requests.jsonl"))
    assert table["feedback_rate"].tolist() == [1.0], table

# --- bodies of any shape -------------------------------------------------------------------------------------------

def test_a_body_nested_100000_deep_is_400_in_openai_s_shape_and_the_next_request_is_answered(client):
    r = client.post("/v1/chat/completions", content=b"[" * 100_000 + b"]" * 100_000,
                    headers={"content-type": "application/json"})
    assert "nested too deeply" in _openai_error(r, 400)["message"]
    deep = {"model": "tiny-test", "messages": [{"role": "user", "content": "x"}], "user": None}
    body = json.dumps(deep).replace("null", "[" * 100_000 + "]" * 100_000).encode()
    assert client.post("/v1/chat/completions", content=body).status_code == 400
    assert client.post("/v1/chat/completions", json=GOOD).status_code == 200

@pytest.mark.parametrize("body", [{"max_tokens": float("inf")}, {"temperature": float("nan")}, {"seed": 10**5000}],
                         ids=["max_tokens-Infinity", "temperature-NaN", "seed-5000-digits"])
def test_numbers_json_allows_but_no_field_takes_are_400(client, body):
    raw = json.dumps({**GOOD, **{k: 0 for k in body}})
    v = next(iter(body.values()))
    lit = "Infinity" if v == float("inf") else "NaN" if v != v else "1" * 5000
    r = client.post("/v1/chat/completions", content=raw.replace(": 0", ": " + lit, 1).encode())
    _openai_error(r, 400)

JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
                    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids, max_size=4),
                    max_leaves=12)
KEYS = ["model", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p", "seed", "stop", "stream",
        "stream_options", "user", "n", "tools", "functions", "logprobs", "top_logprobs", "presence_penalty",
        "frequency_penalty", "logit_bias", "response_format"]
MESSAGE = st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant", "system", "tool", "x"]) | JSON,
                                 "content": st.text(max_size=30) | JSON})
BODY = st.one_of(
    JSON,
    st.dictionaries(st.sampled_from(KEYS), JSON, max_size=6),
    st.fixed_dictionaries({"model": st.sampled_from(["tiny-test", "nosuch"]) | JSON,
                           "messages": st.lists(MESSAGE, max_size=3) | JSON},
                          optional={k: JSON | st.integers(-3, 600) | st.floats(-3, 3) for k in KEYS[2:]}))

@hsettings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                     HealthCheck.too_slow])
@given(body=BODY)
@example(body={**GOOD, "max_tokens": float("inf")})  # a 500 before issue 24
def test_random_json_bodies_never_give_a_5xx_and_the_server_answers_a_good_request_after_each(client, body):
    b = dict(body) if isinstance(body, dict) else body
    if isinstance(b, dict) and isinstance(b.get("max_tokens"), int): b["max_tokens"] = min(b["max_tokens"], 3)
    if isinstance(b, dict): b.pop("max_completion_tokens", None) if not isinstance(b.get("max_completion_tokens"),
                                                                                    bool) else None
    r = client.post("/v1/chat/completions", content=json.dumps(b, allow_nan=True).encode())
    assert r.status_code < 500, (b, r.status_code, r.text[:300])
    if r.status_code >= 400: _openai_error(r, r.status_code)
    ok = client.post("/v1/chat/completions", json=GOOD)
    assert ok.status_code == 200, ok.text[:300]


# --- OpenAI parameters: honoured or refused ---------------------------------------------------------------------------

@pytest.mark.parametrize("field,value", [("logprobs", True), ("top_logprobs", 3), ("presence_penalty", 0.5),
                                         ("frequency_penalty", -1), ("logit_bias", {"50256": -100}),
                                         ("response_format", {"type": "json_object"}),
                                         ("response_format", {"type": "json_schema", "json_schema": {"name": "x"}})])
def test_an_openai_parameter_the_server_does_not_apply_is_refused_with_400(client, field, value):
    err = _openai_error(client.post("/v1/chat/completions", json={**GOOD, field: value}), 400)
    assert err["param"] == field and "not supported" in err["message"], err

@pytest.mark.parametrize("field,value", [("logprobs", False), ("top_logprobs", 0), ("presence_penalty", 0),
                                         ("frequency_penalty", 0.0), ("logit_bias", {}),
                                         ("response_format", {"type": "text"}), ("logprobs", None)])
def test_the_no_op_value_of_an_unsupported_parameter_is_accepted(client, field, value):
    r = client.post("/v1/chat/completions", json={**GOOD, field: value})
    assert r.status_code == 200, r.text[:300]


# --- 404 and 405 in OpenAI's shape ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("method,path,status", [("GET", "/v1/nosuch", 404), ("POST", "/v1/completions", 404),
                                                ("GET", "/", 404), ("POST", "/v1/embeddings", 404),
                                                ("GET", "/v1/models/nosuch", 404),
                                                ("GET", "/v1/chat/completions", 405)])
def test_every_404_and_405_is_in_openai_s_error_shape(client, method, path, status):
    err = _openai_error(client.request(method, path), status)
    assert path in err["message"] or "nosuch" in err["message"], err


# --- a client that leaves, a server that is stopped (real sockets and processes) --------------------------------------

@pytest.mark.slow
def test_a_non_streaming_client_that_times_out_is_noticed_499_and_frees_its_slot(tmp_path):
    eng = load_engine("tiny-test", {}, {"dtype": "float32"}, max_batch=1, progress=False)
    pause = eng.model.register_forward_pre_hook(lambda m, a: time.sleep(0.05))  # 400 tokens: 20 s at least
    forwards = [0]
    count = eng.model.register_forward_pre_hook(lambda m, a: forwards.__setitem__(0, forwards[0] + 1))
    srv = BackgroundServer(make_app(eng, ServeSettings(request_log=str(tmp_path/"requests.jsonl"))))
    try:
        with httpx.Client(base_url=srv.url, timeout=1.0) as c, pytest.raises(httpx.ReadTimeout):
            c.post("/v1/chat/completions", json={**GOOD, "max_tokens": 400})
        assert _wait_for(lambda: eng.stats["cancelled"] == 1 and eng.running == 0, 15), eng.stats
        assert forwards[0] < 200, forwards  # the request left long before its budget
        pause.remove()
        with httpx.Client(base_url=srv.url, timeout=60) as c: ok = c.post("/v1/chat/completions", json=GOOD)
        assert ok.status_code == 200
    finally: pause.remove(); count.remove(); srv.close(); eng.close()
    rows = read_jsonl(tmp_path/"requests.jsonl")
    assert [r["status"] for r in rows] == [499, 200] and rows[0]["error"] == "client closed the connection", rows

SERVER = """
import sys, time
from finetune_kit.deploy import ServeSettings, load_engine, make_app, serve
eng = load_engine("tiny-test", {{}}, {{"dtype": "float32"}}, progress=False)
eng.model.register_forward_pre_hook(lambda m, a: time.sleep(0.05))  # a long answer takes 25 s at least
serve(make_app(eng, ServeSettings(max_tokens=500)), "127.0.0.1", {port}, log_level="warning")
"""

@pytest.mark.slow
def test_sigterm_during_a_stream_stops_the_server_promptly_and_health_answers_meanwhile(tmp_path):
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    p = subprocess.Popen([sys.executable, "-c", SERVER.format(port=port)], env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        assert _wait_for(lambda: _up(url), 120), p.stdout.read() if p.poll() is not None else "no server"
        with httpx.Client(base_url=url, timeout=60) as c:
            body = {**GOOD, "max_tokens": 500, "stream": True}
            with c.stream("POST", "/v1/chat/completions", json=body) as s:
                lines = s.iter_lines()
                while not ('"content": "' in (l := next(lines)) and '"content": ""' not in l): pass  # tokens flow
                assert httpx.get(url + "/health", timeout=10).status_code == 200  # answers meanwhile
                t = time.monotonic()
                p.send_signal(signal.SIGTERM)
                try: p.wait(timeout=15)
                except subprocess.TimeoutExpired: pass
                waited = time.monotonic() - t
        assert p.poll() is not None, "the server still runs 15 s after SIGTERM"
        assert waited < 15, waited
    finally:
        if p.poll() is None: p.kill(); p.wait()

def _up(url) -> bool:
    try: return httpx.get(url + "/health", timeout=2).status_code == 200
    except httpx.HTTPError: return False
