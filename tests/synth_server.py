"""A small OpenAI-compatible `/v1/chat/completions` server on loopback with test modes, for the synth tests.

`/v1/...` answers with the tiny model through the kit's `generate` (sampling); `/echo/v1/...` answers with a
well-formed example for the label the prompt asks for; `/flaky/v1/...` fails every other request with 503;
`/slow/v1/...` answers after `slow_s` seconds. Every request's Authorization header is recorded. The model path is
also tested against the kit's own server (`finetune_kit.deploy`), which has none of these modes.
"""
import hashlib, random, re, threading, time
import uvicorn
from fastapi import FastAPI, HTTPException, Request

_WORDS = ("market river council striker quarterly album league chip budget minister cinema vaccine orbit harvest "
          "tariff festival merger drought stadium sensor election novel startup coach").split()

def _echo(messages, n:int) -> str:
    user = messages[-1]["content"]
    label = (re.search(r"whose label is ([\w-]+)\.", user) or [None, "sport"])[1]
    rng = random.Random(hashlib.sha256(f"{n}:{user}".encode()).hexdigest())
    words = " ".join(rng.sample(_WORDS, 9))
    return f"Text: A report on {words} from the {label} desk.\nLabel: {label}"

def make_app(model=None, tokenizer=None, slow_s:float=1.5) -> FastAPI:
    app = FastAPI()
    app.state.auth, app.state.calls, lock = [], {}, threading.Lock()

    def answer(mode:str, body:dict, req:Request) -> dict:
        with lock:
            app.state.auth.append(req.headers.get("authorization"))
            n = app.state.calls[mode] = app.state.calls.get(mode, 0) + 1  # counted per mode
        if mode == "flaky" and n % 2: raise HTTPException(503, "busy")
        if mode == "slow": time.sleep(slow_s)
        if mode == "model":
            from finetune_kit.engine import generate
            with lock:
                text = generate(model, tokenizer, [body["messages"]], max_new_tokens=body.get("max_tokens", 16),
                                progress=False, temperature=body.get("temperature", 0) or 0,
                                top_p=body.get("top_p", 1.0))[0]
        else: text = _echo(body["messages"], n)
        return {"id": f"cmpl-{n}", "object": "chat.completion", "model": body.get("model", "tiny"),
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}]}

    @app.post("/v1/chat/completions")
    def chat(body:dict, req:Request): return answer("model", body, req)

    @app.post("/{mode}/v1/chat/completions")
    def chat_mode(mode:str, body:dict, req:Request): return answer(mode, body, req)
    return app

class LoopbackServer:
    "Run `app` with uvicorn on 127.0.0.1 (a free port) in a background thread."
    def __init__(self, app):
        self.app = app
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self):
        self.thread.start()
        t0 = time.time()
        while not self.server.started:
            if time.time() - t0 > 30 or not self.thread.is_alive():
                raise RuntimeError("the loopback server did not start")
            time.sleep(0.05)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(10)
