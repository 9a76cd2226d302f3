"Synthetic data: counts, the review queue's round trips, splits, the endpoint on loopback, resume and retries."
import json, os, random, sys
from pathlib import Path

import pytest

from finetune_kit.settings import make_config
from finetune_kit.data import DataError, prepare_data
from finetune_kit.data.queue import (accepted_records, current_record, import_queue_csv, import_queue_label_studio,
                                     label_studio_queue_tasks, read_queue, review_item, write_accepted, write_queue_csv)
from finetune_kit.data.synth import EndpointGenerator, LocalGenerator, synthesize
from finetune_kit.files import read_jsonl

from conftest import starts
from synth_server import LoopbackServer, make_app

LABELS = ["business", "sport", "tech"]
SEEDS = [{"text": f"Seed story {i}: the {w} made headlines across the country this week.", "label": l}
         for i, (w, l) in enumerate(zip(["bank", "club", "phone", "market", "coach", "chip"], LABELS * 2))]
DESC = "The topic of a short news story."
STEPS = ("prompts", "failed", "generated", "parsed", "valid", "unique", "kept")
SECRET = "sk-test-7f3a9c1e-never-on-disk"


def scripted(outputs):
    "A generator answering from `outputs` in turn (an Exception item is that prompt's failure)."
    it = iter(outputs)
    return lambda prompts: [next(it) for _ in prompts]


def story(k, label="sport"):
    rng = random.Random(k)
    words = " ".join(rng.sample("river council striker quarterly album league chip budget minister cinema vaccine "
                                "orbit harvest tariff festival merger drought stadium sensor".split(), 8))
    return f"Text: Story {k} on {words} today.\nLabel: {label}"


def check_counts(c):
    assert c["reconciled"]
    assert c["prompts"] == c["failed"] + c["generated"]
    assert c["generated"] - c["kept"] == sum(c["dropped"].values())


@pytest.fixture(scope="module")
def tiny():
    from finetune_kit.testing import load_tiny
    return load_tiny()


@pytest.fixture(scope="module")
@starts("a uvicorn server on loopback")
def server(tiny):
    "A small OpenAI-compatible app with test modes (echo, flaky, slow) that records the Authorization headers."
    with LoopbackServer(make_app(*tiny, slow_s=1.0)) as s: yield s


@pytest.fixture(scope="module")
@starts("the kit's server on loopback")
def kit_server(tmp_path_factory):
    "The kit's own OpenAI-compatible server (what `finetune-kit serve` runs) over the tiny model, on loopback."
    from finetune_kit.deploy import BackgroundServer, Engine, ServeSettings, load_adapters, make_app as serve_app
    log = tmp_path_factory.mktemp("serve")/"requests.jsonl"
    eng = Engine(*load_adapters("tiny-test", {}, {"dtype": "float32"}, progress=False), "tiny-test").start()
    with BackgroundServer(serve_app(eng, ServeSettings(request_log=str(log)))) as srv:
        srv.log = log
        yield srv
    eng.close()


def test_counts_reconcile(tmp_path, tiny):
    info = synthesize("classification", DESC, SEEDS, LocalGenerator(*tiny, max_new_tokens=12), tmp_path/"tiny", n=6,
                      batch_size=3, progress=False)
    assert info["counts"]["generated"] == 6
    check_counts(info["counts"])
    outs = [story(1), story(1), SEEDS[0]["text"].join(["Text: ", "\nLabel: business"]), story(2, "politics"),
            "Text: Tiny.\nLabel: tech", "no example here", RuntimeError("down"), story(3, "tech"),
            "Text: \nLabel: tech"]
    info = synthesize("classification", DESC, SEEDS, scripted(outs), tmp_path/"mix", n=len(outs), batch_size=4,
                      max_retries=0, progress=False)
    c = info["counts"]
    assert [c[k] for k in STEPS] == [9, 1, 8, 6, 6, 4, 2]
    assert c["dropped"] == {"exact_duplicate": 1, "exact_duplicate_of_seed": 1, "label_not_in_set": 1,
                            "too_short": 1, "unparsable": 2}
    check_counts(c)
    assert len(read_queue(tmp_path/"mix"/"review.jsonl")) == c["kept"]
    assert len(read_jsonl(tmp_path/"mix"/"dropped.jsonl")) == sum(c["dropped"].values())


def test_review_round_trip_keeps_edits(tmp_path):
    run = tmp_path/"run"
    synthesize("classification", DESC, SEEDS, scripted([story(k) for k in range(4)]), run, n=4, progress=False)
    q = run/"review.jsonl"
    ids = [r["id"] for r in read_queue(q)]
    # the notebook: accept one; CSV: edit one and reject one; Label Studio: correct the label of the last
    review_item(q, ids[0], "accepted")
    sheet = write_queue_csv(q, statuses=("pending",))
    rows = sheet.read_text(encoding="utf-8-sig").splitlines()
    rows = [r.replace(",pending,,Story 1 on", ",pending,,Story one (edited) on") if ids[1] in r else
            r.replace(",pending,", ",rejected,") if ids[2] in r else r for r in rows]
    sheet.write_text("\n".join(rows) + "\n", encoding="utf-8-sig")
    ch = import_queue_csv(q, sheet)
    assert ch["edited"] == 1 and ch["rejected"] == 1
    task = next(t for t in label_studio_queue_tasks(q) if t["data"]["id"] == ids[3])
    export = [{"id": 1, "data": task["data"], "annotations": [{"result": [
        {"from_name": "decision", "value": {"choices": ["accept"]}},
        {"from_name": "edit_label", "value": {"choices": ["tech"]}}]}]}]
    assert import_queue_label_studio(q, export)["edited"] == 1
    # a stale sheet (everything pending) changes nothing; a rerun with more prompts appends and keeps the reviews
    stale = write_queue_csv(q, tmp_path/"stale.csv")
    stale.write_text(stale.read_text(encoding="utf-8-sig").replace(",accepted,", ",pending,").replace(
        ",edited,", ",pending,").replace(",rejected,", ",pending,"), encoding="utf-8-sig")
    before = read_queue(q)
    import_queue_csv(q, stale)
    synthesize("classification", DESC, SEEDS, scripted([story(k) for k in range(4, 6)]), run, n=6, progress=False)
    after = read_queue(q)
    assert [(r["id"], r["status"], r["edited"]) for r in after[:4]] == [(r["id"], r["status"], r["edited"])
                                                                       for r in before]
    assert [r["status"] for r in after] == ["accepted", "edited", "rejected", "edited", "pending", "pending"]
    assert current_record(after[1])["text"].startswith("Story one (edited) on")
    assert current_record(after[3])["label"] == "tech"
    acc = accepted_records(q)
    assert [a["meta"]["synth_id"] for a in acc] == [ids[0], ids[1], ids[3]]
    assert acc[1]["text"].startswith("Story one (edited)") and all(a["meta"]["synthetic"] for a in acc)


@pytest.mark.parametrize("params", [{"test_size": 0.3}, {"test_records": 12}])
def test_synthetic_never_in_test_split(tmp_path, params):
    run = tmp_path/"run"
    synthesize("classification", DESC, SEEDS, scripted([story(k, LABELS[k % 3]) for k in range(30)]), run, n=30,
               progress=False)
    for r in read_queue(run/"review.jsonl"): review_item(run/"review.jsonl", r["id"], "accepted")
    n_syn = write_accepted(run/"review.jsonl", tmp_path/"synthetic.jsonl")
    assert n_syn == 30
    rng = random.Random(0)
    real = [{"text": f"Real story {i} " + " ".join(rng.choices("a b c d e f g h i j k l m n o p".split(), k=12)),
             "label": LABELS[i % 3]} for i in range(60)]
    (tmp_path/"real.jsonl").write_text("".join(json.dumps(r) + "\n" for r in real))
    cfg = make_config({"max_records": None, "max_chars": None, "val_size": 0.2, **params}, settings=False)
    info = prepare_data(cfg, tmp_path/"data", sources=[str(tmp_path/"real.jsonl"), str(tmp_path/"synthetic.jsonl")])
    splits = {s: read_jsonl(tmp_path/"data"/f"{s}.jsonl") for s in ("train", "validation", "test")}
    assert len(splits["test"]) > 0 and len(splits["validation"]) > 0
    for s in ("validation", "test"): assert not any(r["meta"].get("synthetic") for r in splits[s])
    assert sum(bool(r["meta"].get("synthetic")) for r in splits["train"]) == n_syn
    assert info["split"]["synthetic_in_train"] == n_syn
    card = (tmp_path/"data"/"card.md").read_text()
    assert f"{n_syn} synthetic records (reviewed generator output) are all in train" in card


def _no_secret_under(folder):
    for p in Path(folder).rglob("*"):
        if p.is_file(): assert SECRET.encode() not in p.read_bytes(), p


def test_endpoint_loopback_key_never_on_disk(tmp_path, server, kit_server, monkeypatch, run_cli):
    monkeypatch.setenv("FK_TEST_SYNTH_KEY", SECRET)
    # the kit's own server, its model named by its /v1/models
    gen = EndpointGenerator(kit_server.url, api_key_env="FK_TEST_SYNTH_KEY", max_new_tokens=12, timeout=60)
    assert SECRET not in repr(vars(gen))
    info = synthesize("classification", DESC, SEEDS, gen, tmp_path/"model", n=4, batch_size=2, progress=False)
    assert info["counts"]["generated"] == 4 and info["counts"]["failed"] == 0, info["errors"]
    check_counts(info["counts"])
    assert info["generator"]["api_key_env"] == "FK_TEST_SYNTH_KEY" and info["generator"]["model"] == "tiny-test"
    assert len(read_jsonl(kit_server.log)) >= 4  # the server logged the requests (checked for the key below)
    assert SECRET.encode() not in kit_server.log.read_bytes()
    n0 = len(server.app.state.auth)
    gen = EndpointGenerator(server.url, "tiny", api_key_env="FK_TEST_SYNTH_KEY", max_new_tokens=12, timeout=60)
    synthesize("classification", DESC, SEEDS, gen, tmp_path/"model2", n=4, batch_size=2, progress=False)
    assert server.app.state.auth[n0:] == [f"Bearer {SECRET}"] * 4  # the key was sent with every request
    # the CLI, against the endpoint that answers with well-formed examples
    seeds = tmp_path/"seeds.jsonl"
    seeds.write_text("".join(json.dumps(s) + "\n" for s in SEEDS))
    r = run_cli("synth", "generate", seeds, "-o", tmp_path/"cli", "-d", DESC, "--n", "6", "--batch-size", "3",
                "--endpoint", server.url + "/echo", "--api-key-env", "FK_TEST_SYNTH_KEY", "--no-progress",
                env={**os.environ, "FK_TEST_SYNTH_KEY": SECRET})
    assert r.returncode == 0, r.stderr
    assert "kept 6" in r.stdout, r.stdout
    assert len(read_queue(tmp_path/"cli"/"review.jsonl")) == 6
    r = run_cli("synth", "sheet", tmp_path/"cli")
    assert r.returncode == 0 and (tmp_path/"cli"/"review.csv").is_file(), r.stderr
    _no_secret_under(tmp_path)
    assert SECRET not in r.stdout + r.stderr
    r = run_cli("synth", "generate", seeds, "-o", tmp_path/"cli2", "-d", DESC, "--endpoint", server.url,
                "--api-key-env", "FK_TEST_SYNTH_UNSET_VAR", env={k: v for k, v in os.environ.items()
                                                                if k != "FK_TEST_SYNTH_UNSET_VAR"})
    assert r.returncode == 2 and r.stderr.strip().startswith("error: the API key variable") and len(
        r.stderr.strip().splitlines()) == 1


def test_resume_after_interruption(tmp_path):
    class Interrupted:
        "Answers `after` calls, then is killed."
        def __init__(self, after): self.calls, self.after = 0, after
        def __call__(self, prompts):
            self.calls += 1
            if self.calls > self.after: raise KeyboardInterrupt
            return [story(100 * self.calls + k) for k in range(len(prompts))]
    run = tmp_path/"run"
    with pytest.raises(KeyboardInterrupt):
        synthesize("classification", DESC, SEEDS, Interrupted(2), run, n=10, batch_size=3, progress=False)
    first = read_jsonl(run/"generated.jsonl")
    assert [r["i"] for r in first] == list(range(6))  # two batches saved as they finished
    with (run/"generated.jsonl").open("a") as f: f.write('{"i": 6, "outp')  # a line cut short by the kill
    with pytest.raises(DataError, match="other settings"):  # an interrupted run is still checked on resume
        synthesize("classification", "Another task.", SEEDS, scripted([]), run, n=10, progress=False)
    info = synthesize("classification", DESC, SEEDS, scripted([story(k) for k in range(1000, 1004)]), run, n=10,
                      batch_size=3, progress=False)
    rows = read_jsonl(run/"generated.jsonl")
    assert [r["i"] for r in rows] == list(range(10)) and rows[:6] == first
    assert info["counts"]["prompts"] == 10 and info["counts"]["kept"] == 10
    check_counts(info["counts"])
    # the resumed prompts drew the seeds the first run would have drawn
    from finetune_kit.data.synth import synth_prompt
    assert rows[7]["seeds"] == synth_prompt("classification", DESC, SEEDS, 7, 3, LABELS)[1]


def test_retries_counted(tmp_path, server):
    gen = EndpointGenerator(server.url + "/flaky", max_new_tokens=12, timeout=30, concurrency=1)
    info = synthesize("classification", DESC, SEEDS, gen, tmp_path/"flaky", n=4, batch_size=1, retry_wait=0,
                      progress=False)
    c = info["counts"]
    assert c["failed"] == 0 and c["generated"] == 4 and c["errors"] == 4 and c["retries"] == 4 and c["timeouts"] == 0
    gen = EndpointGenerator(server.url + "/slow", max_new_tokens=12, timeout=0.2, concurrency=2)
    with pytest.raises(DataError, match="/slow/v1/chat/completions: no answer to any of the 2 prompts .*Timeout"):
        synthesize("classification", DESC, SEEDS, gen, tmp_path/"slow", n=2, batch_size=2, max_retries=1, retry_wait=0,
                   progress=False)  # nothing answered at all: one line (issue 24), the failures kept for a rerun
    rows = read_jsonl(tmp_path/"slow"/"generated.jsonl")
    assert all(r["output"] is None and "Timeout" in r["error"] for r in rows)
    assert [(r["tries"], r["timeouts"], r["errors"]) for r in rows] == [(2, 2, 2)] * 2


def test_ner_and_summarization(tmp_path):
    ner_seeds = [{"tokens": f"{p} flew to {c} on Monday".split(), "tags": ["B-person", "O", "O", "B-loc", "O", "O"]}
                 for p, c in [("Ada", "Paris"), ("Bob", "Rome"), ("Cy", "Oslo")]]
    outs = ["Text: Dana Scully met Fox in Washington last night\nEntities:\nperson: Dana Scully\nperson: Fox\n"
            "loc: Washington", "Text: Nobody went anywhere at all that day\nEntities:\nnone",
            "Text: Eve visited Lima\nEntities:\nperson: Zed"]  # Zed is not in the text
    info = synthesize("ner", "Find people and places.", ner_seeds, scripted(outs), tmp_path/"ner", n=3, min_chars=10,
                      progress=False)
    assert info["counts"]["kept"] == 2 and info["counts"]["dropped"] == {"invalid_bad_tags": 1}
    rec = read_queue(tmp_path/"ner"/"review.jsonl")[0]["record"]
    assert rec["tags"][:5] == ["B-person", "I-person", "O", "B-person", "O"]
    sum_seeds = [{"document": f"Document {i}: the council met and agreed a long list of changes to the {w} plan.",
                  "summary": f"The council changed the {w} plan."} for i, w in enumerate(["bus", "park", "school"])]
    outs = ["Document: The board reviewed costs and chose to delay the stadium project by a year.\n"
            "Summary: The stadium project is delayed a year.", "Document: something\n"]
    info = synthesize("summarization", "Summarize council notes.", sum_seeds, scripted(outs), tmp_path/"sum", n=2,
                      progress=False)
    c = info["counts"]
    assert (c["kept"], c["dropped"]) == (1, {"unparsable": 1}) and c["reconciled"]


def test_cli_local_model_and_review_cycle(tmp_path, run_cli):
    seeds = tmp_path/"seeds.jsonl"
    seeds.write_text("".join(json.dumps(s) + "\n" for s in SEEDS))
    r = run_cli("synth", "generate", seeds, "-o", tmp_path/"run", "-d", DESC, "--n", "3", "--max-new-tokens", "8",
                "--no-progress", "-p", "base_model", "tiny-test", "-p", "dtype", "float32")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("prompts 3 -> generated 3 -> parsed "), r.stdout
    # the review cycle on the command line, over a queue with candidates in it
    run = tmp_path/"run2"
    synthesize("classification", DESC, SEEDS, scripted([story(k) for k in range(3)]), run, n=3, progress=False)
    assert run_cli("synth", "sheet", run).returncode == 0
    sheet = run/"review.csv"
    sheet.write_text(sheet.read_text(encoding="utf-8-sig").replace(",pending,", ",accepted,", 2), encoding="utf-8-sig")
    r = run_cli("synth", "import", run, sheet)
    assert r.returncode == 0 and "accepted 2" in r.stdout, r.stdout + r.stderr
    r = run_cli("synth", "accepted", run, "-o", tmp_path/"synthetic.jsonl")
    assert r.returncode == 0 and "wrote 2 records" in r.stdout
    assert all(x["meta"]["synthetic"] for x in read_jsonl(tmp_path/"synthetic.jsonl"))
    bad = tmp_path/"bad.csv"
    bad.write_text("id,status,note,text,label\nnope,accepted,,x,y\n")
    r = run_cli("synth", "import", run, bad)
    assert r.returncode == 2 and "id 'nope' is not in" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_cli_unreachable_endpoint_fails_in_one_line(tmp_path, run_cli):
    "Nothing listening: exit 2 and one line naming the endpoint (issue 24; it was exit 0 with every prompt failed)."
    seeds = tmp_path/"seeds.jsonl"
    seeds.write_text("".join(json.dumps(s) + "\n" for s in SEEDS))
    r = run_cli("synth", "generate", seeds, "-o", tmp_path/"run", "-d", DESC, "--n", "2", "--endpoint",
                "http://127.0.0.1:9", "--max-retries", "1", "--timeout", "2", "--no-progress")
    assert r.returncode == 2 and r.stdout == "" and r.stderr.count("\n") == 1, r.stderr
    assert r.stderr.startswith("error: http://127.0.0.1:9/v1/chat/completions: no answer to any of the 2 prompts "
                               "(ConnectError"), r.stderr
    assert [x["errors"] for x in read_jsonl(tmp_path/"run"/"generated.jsonl")] == [2, 2]  # kept: a rerun asks again


def test_concurrent_writers_lose_nothing(tmp_path):
    "A reviewer clicking while a generator run appends: every decision and every new row survives."
    from concurrent.futures import ThreadPoolExecutor
    from finetune_kit.data.queue import add_to_queue
    q = tmp_path/"review.jsonl"
    first = [{"id": f"a{i}", "task": "classification", "record": {"text": f"text {i}", "label": "sport"}}
             for i in range(40)]
    add_to_queue(q, first)
    more = [{"id": f"b{i}", "task": "classification", "record": {"text": f"more {i}", "label": "tech"}}
            for i in range(40)]
    with ThreadPoolExecutor(4) as pool:
        jobs = [pool.submit(review_item, q, f"a{i}", "accepted") for i in range(40)]
        jobs += [pool.submit(add_to_queue, q, more[i:i+4]) for i in range(0, 40, 4)]
        for j in jobs: j.result()
    rows = read_queue(q)
    assert len(rows) == 80 and sum(r["status"] == "accepted" for r in rows) == 40
