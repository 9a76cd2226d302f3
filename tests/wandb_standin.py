"""A loopback stand-in for the W&B server: answers the few GraphQL calls and the file-stream and upload requests
the W&B client makes for a run, and records what it was sent (runs, history rows, summaries, sweeps)."""
import json, re, threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ENTITY = "kit-tester"

class WandbStandin:
    "Start with `with WandbStandin() as wb:`; point the client at `wb.url` (WANDB_BASE_URL)."
    def __init__(self):
        self.lock, self.buckets, self.history, self.summary, self.requests = threading.Lock(), [], {}, {}, []
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self):
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown(); self.server.server_close()

    def rows(self, run_id:str) -> list[dict]:
        "The history rows the client streamed for `run_id`."
        with self.lock: return list(self.history.get(run_id, []))

    def _graphql(self, q:str, v:dict) -> dict:
        if "viewer" in q: return {"viewer": {"id": "u1", "entity": ENTITY, "username": ENTITY, "email": "t@example.com",
                                              "flags": "{}", "teams": {"edges": []}}}
        if "upsertBucket" in q:
            with self.lock: self.buckets.append(v)
            return {"upsertBucket": {"inserted": True, "bucket": {
                "id": "b-" + str(v.get("name")), "name": v.get("name"), "displayName": v.get("displayName") or v.get("name"),
                "description": None, "config": None, "sweepName": v.get("sweep"), "historyLineCount": 0,
                "project": {"id": "p1", "name": v.get("project") or "uncategorized", "entity": {"id": "e1", "name": ENTITY}}}}}
        if "serverInfo" in q and "features" in q:  # a server without optional features (wandb 0.19's core needs an answer)
            return {"serverInfo": {"features": []}}
        if "createRunFiles" in q:
            return {"createRunFiles": {"runID": v.get("run"), "uploadHeaders": [],
                                       "files": [{"name": f, "uploadUrl": f"{self.url}/upload/{f}"} for f in v.get("files", [])]}}
        return {}  # anything else: nothing known (a new run, no sweep state, no organization)

    def _handler(self):
        standin = self
        class H(BaseHTTPRequestHandler):
            def log_message(self, *a): pass
            def _reply(self, obj):
                body = json.dumps(obj).encode()
                self.send_response(200); self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body))); self.end_headers(); self.wfile.write(body)
            def do_POST(self):
                raw = self.rfile.read(int(self.headers.get("content-length") or 0))
                with standin.lock: standin.requests.append(self.path)
                if self.path.startswith("/graphql"):
                    j = json.loads(raw or b"{}")
                    return self._reply({"data": standin._graphql(j.get("query", ""), j.get("variables") or {})})
                m = re.match(r"/files/([^/]+)/([^/]+)/([^/]+)/file_stream", self.path)
                if m:
                    run, files = m.group(3), json.loads(raw or b"{}").get("files", {})
                    with standin.lock:
                        for line in files.get("wandb-history.jsonl", {}).get("content", []):
                            standin.history.setdefault(run, []).append(json.loads(line))
                        for line in files.get("wandb-summary.json", {}).get("content", []):
                            standin.summary.setdefault(run, {}).update(json.loads(line))
                    return self._reply({"exitcode": None, "limits": {}})
                return self._reply({})
            def do_PUT(self):
                self.rfile.read(int(self.headers.get("content-length") or 0))
                self._reply({})
            def do_GET(self): self._reply({})
        return H
