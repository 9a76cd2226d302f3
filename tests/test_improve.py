"""The improvement loop's last piece (issue 27): `improve` as a job. A real `finetune-kit serve` process on 127.0.0.1
serves a trained tiny production adapter; requests and feedback (with corrections) go through it; then the improve
workbook runs as a papermill job (`finetune-kit run`) and the test checks the prepared folder, the candidate trained
from production, its evaluation against production, the export and the registry entry; a second run adds an entry
and leaves the first as it was; a candidate worse than the rule allows is not registered; no usable feedback stops
the job in one line with exit status 2."""
import json, signal, subprocess, time
from pathlib import Path
import pytest

httpx = pytest.importorskip("httpx")
from conftest import starts
from helpers import BIN, ROOT, TRAIN_SMALL, free_port, lines, param_args, tiny_config
from finetune_kit.deploy.improve import read_feedback

WORKBOOK = ROOT/"nbs/workbooks/improve.ipynb"
JUDGE = {"max_new_tokens": 4, "bootstrap_samples": 50, "max_steps": 2, "test_size": 0.3, "val_size": 0,
         "report_to": "none"}


def test_the_workbook_restates_no_default_and_names_the_improve_parameters():
    from dataclasses import fields
    from finetune_kit.config import ImproveConfig, param_specs
    nb = json.loads(WORKBOOK.read_text())
    cell = "".join(next(c for c in nb["cells"] if "parameters" in c["metadata"].get("tags", []))["source"])
    ns = {}; exec(cell, ns)
    names = [k for k in ns if not k.startswith("__")]
    assert {k: ns[k] for k in names if ns[k] is not None} == {}
    assert set(names) <= set(param_specs()), set(names) - set(param_specs())
    assert {f.name for f in fields(ImproveConfig)} <= set(names)


def test_the_plan_stops_in_one_line_on_what_it_cannot_use(tmp_path):
    from finetune_kit.deploy.improve import improve_plan
    from finetune_kit.jobs import JobStop
    for params, says in [({}, "improve: no production run given (-p production RUN_FOLDER)"),
                         ({"production": str(tmp_path)}, "improve: no feedback file given (-p feedback_file FILE)"),
                         ({"production": str(tmp_path), "feedback_file": "fb.jsonl"},
                          f"production {tmp_path}: {tmp_path}: neither a run folder"),
                         ({"production": str(tmp_path/"gone"), "feedback_file": "fb.jsonl"},
                          f"production {tmp_path/'gone'}: {tmp_path/'gone'}: no such run or adapter folder")]:
        with pytest.raises(JobStop) as e: improve_plan(params)
        assert str(e.value).startswith(says) and "\n" not in str(e.value), str(e.value)


@pytest.fixture(scope="module")
def production(tmp_path_factory):
    "A trained tiny production run (BBC, 2 steps): its adapter and its own test split, the frozen test set."
    from finetune_kit.train import train
    d = tmp_path_factory.mktemp("improve")
    res = train(tiny_config(TRAIN_SMALL, max_steps=2, dtype="float32", lora_r=8, runs_dir=str(d/"runs"),
                            run_id="prod"))
    return res.run_dir


@pytest.fixture(scope="module")
@starts("a finetune-kit serve process on loopback")
def served(production):
    """The production adapter served as `prod` by a real server with --log-text; production's training prompts and
    its test prompts asked; answers rated, most corrected with the right label. The server's feedback file."""
    d = production.parent.parent
    port, url = free_port(), None
    p = subprocess.Popen([str(BIN/"finetune-kit"), "serve", f"prod={production/'adapter'}", "--port", str(port),
                          "--log", str(d/"requests.jsonl"), "--feedback", str(d/"feedback.jsonl"), "--log-text",
                          "-p", "dtype", "float32"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for _ in range(3000):
            if p.poll() is not None: pytest.fail(p.stderr.read())
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200: url = f"http://127.0.0.1:{port}"; break
            except httpx.TransportError: time.sleep(0.2)
        assert url, "the server did not come up"
        train_recs, test_recs = lines(production/"data/train.jsonl")[:14], lines(production/"data/test.jsonl")
        with httpx.Client(base_url=url, timeout=300) as c:
            for i, r in enumerate(train_recs + test_recs):
                a = c.post("/v1/chat/completions", json={"model": "prod", "messages": r["prompt"], "max_tokens": 4,
                                                         "user": f"u{i}"})
                assert a.status_code == 200, a.text
                fb = ({"rating": 1} if i % 7 == 3 else {"rating": -1, "correction": r["reference"]} if i % 7 != 5
                      else {"rating": -1})
                assert c.post("/v1/feedback", json={"request_id": a.json()["id"], **fb}).status_code == 200
    finally:
        p.send_signal(signal.SIGINT)
        p.communicate(timeout=120)
    f = d/"feedback.jsonl"
    with open(f, "ab") as out: out.write(b'{"prompt": [{"role": "user", "content": "cut sho')  # a crash mid-line
    return f


def _job(run_cli, production, feedback, run_id, **params):
    return run_cli("run", WORKBOOK, *param_args({"production": production, "feedback_file": feedback,
                                                  "runs_dir": production.parent, "run_id": run_id, **JUDGE, **params}))


def test_improve_job_end_to_end_on_loopback_traffic(production, served, run_cli):
    runs, prod_test = production.parent, lines(production/"data/test.jsonl")
    r = _job(run_cli, production, served, "cand1")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    cand = runs/"cand1"
    # the prepared folder: the feedback through the data stage, versioned; frozen test prompts removed
    info = json.loads((cand/"data/data.json").read_text())
    assert info["task"] == "prompt_completion" and info["fingerprint"]
    used = json.loads((cand/"feedback/feedback.json").read_text())["counts"]
    assert used["skipped_lines"] == 1 and used["records"] == 14 + len(prod_test) and used["reconciled"]
    assert used["usable"] == used["corrected"] + used["rated_good"]  # corrections (rated bad) and good answers
    frozen = {json.dumps(x["prompt"][-1]["content"]) for x in prod_test}
    kept = [x for s in ("train", "validation", "test") for x in lines(cand/f"data/{s}.jsonl")]
    assert kept and not {json.dumps(x["prompt"][-1]["content"]) for x in kept} & frozen  # the exam stays unseen
    assert info["counts"]["decontaminated"] > 0
    # the candidate trained from the production adapter
    cfg = json.loads((cand/"config.json").read_text())
    assert cfg["train"]["init_adapter"] == str(production/"adapter") and cfg["train"]["objective"] == "sft"
    assert cfg["model"]["base_model"] == "tiny-test" and cfg["peft"]["lora_r"] == 8
    from safetensors.torch import load_file
    a, b = load_file(production/"adapter/adapter_model.safetensors"), load_file(cand/"adapter/adapter_model.safetensors")
    assert a.keys() == b.keys() and any(not (a[k] == b[k]).all() for k in a)  # moved from production's weights
    # judged against production: on the frozen test set (production's own test split) and on held-out feedback
    m = json.loads((cand/"eval/metrics.json").read_text())
    assert "start" in m["systems"] and Path(m["data"]) == production/"data" and m["n"] == len(prod_test)
    assert {"low", "high", "value"} <= set(m["intervals"]["tuned - start"])
    mf = json.loads((cand/"eval-feedback/metrics.json").read_text())
    assert mf["n"] == len(lines(cand/"data/test.jsonl")) > 0 and "tuned - start" in mf["intervals"]
    # the export, the registry entry and the command printed
    out = json.loads((cand/"improve.json").read_text())
    assert json.loads((cand/"export/export.json").read_text())["ok"] and out["export"]["ok"]
    reg = lines(runs/"canaries.jsonl")
    assert len(reg) == 1 and reg[0]["version"] == 1 and reg[0]["name"] == "prod"
    assert reg[0]["adapter"] == str(cand/"adapter") and reg[0]["data_version"] == info["fingerprint"]
    assert reg[0]["frozen_test"]["production"] == m["start"][m["headline"]]
    cmd = f"finetune-kit serve prod={production/'adapter'} --canary prod={cand/'adapter'}"
    assert reg[0]["serve"] == cmd and cmd in r.stdout and "registered prod version 1" in r.stdout
    print("\n".join(l for l in r.stdout.splitlines() if "registered" in l or "frozen" in l or "feedback" in l))
    print(json.dumps({k: out[k] for k in ("frozen_test", "held_out_feedback", "reason")}, indent=1))
    first = (runs/"canaries.jsonl").read_bytes()

    # a second run: the next version, the first entry as it was
    r = _job(run_cli, production, served, "cand2")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    reg = lines(runs/"canaries.jsonl")
    assert [x["version"] for x in reg] == [1, 2] and reg[1]["adapter"] == str(runs/"cand2/adapter")
    assert (runs/"canaries.jsonl").read_bytes().startswith(first)

    # the serve path reads the registry: `--canary prod=REGISTRY` releases its newest entry for prod
    port = free_port()
    p = subprocess.Popen([str(BIN/"finetune-kit"), "serve", f"prod={production/'adapter'}", "--canary",
                          f"prod={runs/'canaries.jsonl'}", "--port", str(port), "--log", str(runs/"serve2.jsonl"),
                          "--feedback", str(runs/"feedback2.jsonl"), "-p", "dtype", "float32"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for _ in range(3000):
            if p.poll() is not None: pytest.fail(p.stderr.read())
            try: models = httpx.get(f"http://127.0.0.1:{port}/v1/models").json()["data"]; break
            except httpx.TransportError: time.sleep(0.2)
        roots = {m["id"]: m["root"] for m in models}
        assert roots["prod-canary"] == str(runs/"cand2/adapter") and roots["prod"] == str(production/"adapter")
    finally:
        p.send_signal(signal.SIGINT); p.communicate(timeout=120)

    # a candidate the rule calls worse (a margin that asks it to beat production by half the scale): not registered
    before = (runs/"canaries.jsonl").read_bytes()
    r = _job(run_cli, production, served, "cand3", ship_margin=-0.5)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "not registered: candidate - production" in r.stdout and "beyond the margin -0.5" in r.stdout
    assert (runs/"canaries.jsonl").read_bytes() == before and not (runs/"cand3/export").exists()
    assert json.loads((runs/"cand3/improve.json").read_text())["registered"] is None


def test_improve_job_without_usable_feedback_says_so_in_one_line(production, served, run_cli, tmp_path):
    runs = production.parent
    before = (runs/"canaries.jsonl").read_bytes() if (runs/"canaries.jsonl").exists() else None
    useless = tmp_path/"feedback.jsonl"
    rows = [x for x in read_feedback(served)[0] if not x.get("correction") and x["rating"] < 0]  # bad answers, nothing wanted
    assert rows
    useless.write_text("".join(json.dumps(x) + "\n" for x in rows) + "not json\n")
    r = _job(run_cli, production, useless, "nothing")
    assert r.returncode == 2, r.stdout[-2000:] + r.stderr[-2000:]
    err = [l for l in r.stderr.splitlines() if l.startswith("error:")]
    assert len(err) == 1 and f"no usable feedback in {useless}: 0 records for sft" in err[0], r.stderr[-2000:]
    assert "1 lines skipped" in err[0] and "nothing registered" in err[0]
    after = (runs/"canaries.jsonl").read_bytes() if (runs/"canaries.jsonl").exists() else None
    assert after == before and not (runs/"nothing/adapter").exists()


def test_serve_reads_a_registry_without_an_entry_for_the_name_as_one_line(tmp_path):
    from typer.testing import CliRunner
    from finetune_kit.cli import app
    from finetune_kit.deploy.improve import register_canary
    reg = tmp_path/"canaries.jsonl"
    register_canary(reg, {"name": "other", "adapter": str(tmp_path/"cand/adapter")})
    (tmp_path/"prod").mkdir()
    r = CliRunner().invoke(app, ["serve", f"prod={tmp_path/'prod'}", "--canary", f"prod={reg}"])
    assert r.exit_code == 2 and f"{reg} registers no candidate for 'prod'" in r.output and r.output.count("\n") == 1, \
        r.output


@pytest.mark.slow
def test_a_candidate_worse_on_the_frozen_test_set_is_not_registered(tmp_path, one_torch_thread):
    """A production adapter that learned something (the tiny model answering 'sport' to every article: macro-F1 above
    zero on its test split) and feedback whose 'corrections' teach it nonsense at a high learning rate: the candidate
    loses the task, the rule says worse, nothing is exported or registered, and the job's record says why."""
    from finetune_kit.deploy.ab import feedback_record
    from finetune_kit.deploy.improve import improve_plan, judge_candidate, prepare_feedback, register_candidate
    from finetune_kit.runs import create_run
    from finetune_kit.train import train
    from helpers import CLS
    prod = train(tiny_config({"data_dir": str(CLS), "num_train_epochs": 6, "learning_rate": 1e-2,
                              "per_device_train_batch_size": 4, "dtype": "float32", "lora_r": 8, "seed": 3},
                             runs_dir=str(tmp_path/"runs"), run_id="prod")).run_dir
    fb = tmp_path/"feedback.jsonl"
    fb.write_text("".join(json.dumps(feedback_record(r["prompt"], r["reference"], -1, "zq " * 12, request_id=f"r{i}"))
                          + "\n" for i, r in enumerate(lines(CLS/"train.jsonl"))))
    plan = improve_plan({"production": str(prod), "feedback_file": str(fb), "runs_dir": str(tmp_path/"runs"),
                         "run_id": "worse", "learning_rate": 5e-2, "num_train_epochs": 3, "val_size": 0,
                         "test_size": 0.2, "max_new_tokens": 4, "bootstrap_samples": 200, "report_to": "none"})
    cfg, run_dir = create_run(plan.cfg)
    info = prepare_feedback(plan, tokenizer="tiny-test")
    train(cfg, run_dir=run_dir)
    judged = judge_candidate(plan)
    out = register_candidate(plan, judged, info)
    f = out["frozen_test"]
    assert f["production"] > 0 and f["candidate"] < f["production"] and f["ci_low"] < -cfg.eval.ship_margin, f
    assert out["registered"] is None and out["reason"].startswith("not registered: candidate - production")
    assert "worse than production beyond the margin" in out["reason"] and out["export"] is None
    assert not (tmp_path/"runs/canaries.jsonl").exists() and not (run_dir/"export").exists()
    print(json.dumps(f, indent=1))


@pytest.mark.slow
@pytest.mark.parametrize("objective,task", [("dpo", "preference"), ("kto", "unpaired_preference")])
def test_a_preference_objective_learns_from_the_feedback_it_can_use(objective, task, tmp_path, one_torch_thread):
    """DPO takes the corrections over the answers they corrected, KTO every rated answer; the held-out feedback is
    judged on its wanted answers (the correction; an answer rated good), and the candidate is registered."""
    from finetune_kit.deploy.ab import feedback_record
    from finetune_kit.deploy.improve import improve_plan, judge_candidate, prepare_feedback, register_candidate
    from finetune_kit.runs import create_run
    from finetune_kit.train import train
    from helpers import CLS
    prod = train(tiny_config({"data_dir": str(CLS), "max_steps": 2, "dtype": "float32", "lora_r": 8, "seed": 3},
                             runs_dir=str(tmp_path/"runs"), run_id="prod")).run_dir
    fb = tmp_path/"feedback.jsonl"
    fb.write_text("".join(json.dumps(feedback_record(r["prompt"], "sport", 1 if i % 3 == 0 else -1,
                                                     None if i % 3 == 0 else r["reference"])) + "\n"
                          for i, r in enumerate(lines(CLS/"train.jsonl"))))
    plan = improve_plan({"production": str(prod), "feedback_file": str(fb), "runs_dir": str(tmp_path/"runs"),
                         "run_id": objective, "objective": objective, "max_steps": 2, "val_size": 0, "test_size": 0.3,
                         "per_device_train_batch_size": 4, "max_new_tokens": 4, "bootstrap_samples": 50,
                         "report_to": "none"})
    assert plan.cfg.data.task == task and plan.cfg.train.init_adapter == str(prod/"adapter")
    cfg, run_dir = create_run(plan.cfg)
    info = prepare_feedback(plan, tokenizer="tiny-test")
    assert info["task"] == task and info["counts"]["splits"]["train"] > 0
    train(cfg, run_dir=run_dir)
    out = register_candidate(plan, judge_candidate(plan), info)
    held = [r for r in lines(run_dir/"data/test.jsonl") if task == "preference" or r["label"] is True]
    assert out["held_out_feedback"]["n"] == len(held) > 0
    assert out["registered"]["version"] == 1 and out["registered"]["objective"] == objective
