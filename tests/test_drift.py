"Drift: served inputs against the adapter's training split, as a library call and in `monitor`; logs with bad lines."
import json, random
from pathlib import Path
import pytest
from typer.testing import CliRunner
from finetune_kit.cli import app
from finetune_kit.files import write_jsonl
from finetune_kit.data.packaged import load_bbc, load_wnut16
from finetune_kit.data.templates import make_template, make_prompt
from finetune_kit.deploy import DriftSettings, drift_windows, load_reference, monitor, request_row
from finetune_kit.deploy.ab import last_user_text

runner = CliRunner()


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    "A prepared-looking BBC folder (train.jsonl of prompts, data.json), and held-out (input, label) pairs, and tweets."
    bbc = load_bbc()
    random.Random(0).shuffle(bbc)
    tmpl = make_template("classification", sorted({r["label"] for r in bbc}))
    rec = lambda r: {"task": "classification", "prompt": make_prompt({"text": r["text"][:400]}, tmpl),
                     "completion": [{"role": "assistant", "content": r["label"]}]}
    d = tmp_path_factory.mktemp("prepared")
    write_jsonl([rec(r) for r in bbc[:600]], d/"train.jsonl")
    (d/"data.json").write_text(json.dumps({"task": "classification", "labels": tmpl["labels"], "template": tmpl}))
    held = [(last_user_text(rec(r)["prompt"]), r["label"]) for r in bbc[600:1000]]
    tweets = [last_user_text(make_prompt({"text": " ".join(r["tokens"])}, tmpl)) for r in load_wnut16()[:300]]
    return d, held, tweets


def test_the_alarm_fires_on_shifted_windows_and_not_on_in_distribution_ones(prepared):
    d, held, tweets = prepared
    ref = load_reference(d)
    assert len(ref.texts) == 600 and ref.label_set == sorted(set(ref.labels)) == sorted(set(l for _, l in held))
    inputs = [t for t, _ in held[:180]] + tweets[:120]
    answers = [l for _, l in held[:180]] + ["sports"] * 120  # a shift in what users ask moves what the model answers
    w, unlike = drift_windows(inputs, ref, answers, settings=DriftSettings(window=60, reference_size=240,
                                                                          n_resamples=300))
    assert list(w["alarm"]) == [False, False, False, True, True], w
    assert w.loc[3, "auc_alarm"] and w.loc[3, "length_alarm"] and w.loc[3, "label_alarm"]
    assert w.loc[:2, "ci_low"].max() < 0.55 < w.loc[3:, "ci_low"].min()
    assert len(unlike) == 10 and unlike["request"].min() >= 180  # the examples shown are the tweets


def test_load_reference_says_what_is_missing(tmp_path, prepared):
    from finetune_kit.files import KitError
    with pytest.raises(KitError, match="no such data folder, run folder or JSONL file"): load_reference(tmp_path/"nope")
    (tmp_path/"run"/"adapter").mkdir(parents=True)
    (tmp_path/"run"/"adapter"/"adapter_config.json").write_text("{}")
    with pytest.raises(KitError, match="no prepared splits"): load_reference(tmp_path/"run"/"adapter")
    d, _, _ = prepared
    assert load_reference(d/"train.jsonl").source == str(d/"train.jsonl")


def _log(path, inputs, answers=None, t0=1_700_000_000.0):
    rows = [request_row(time=t0 + i, id=f"chatcmpl-{i}", model="bbc", adapter="bbc", status=200, latency_s=0.5,
                        input=x, answer=(answers or [None] * len(inputs))[i]) for i, x in enumerate(inputs)]
    write_jsonl(rows, path)
    return path


def test_monitor_reads_a_log_with_cut_and_foreign_lines_counting_them(tmp_path):
    log = _log(tmp_path/"requests.jsonl", ["a"] * 30)
    lines = log.read_text().splitlines()
    log.write_text("\n".join(lines[:10] + ["INFO: Uvicorn running", '{"msg": "hi"}', "[]"] + lines[10:]
                             + [lines[0][:25]]) + "\n")  # and a last line cut short by a crash
    m = monitor(log, n_resamples=100)
    assert m["table"].loc[("bbc", "-"), "requests"] == 30
    assert "4 log lines skipped" in m["markdown"]
    assert json.loads(m["files"]["json"].read_text())["skipped_lines"] == 4
    (tmp_path/"junk.jsonl").write_text('{"time": 1\nnot json\n')
    r = runner.invoke(app, ["monitor", str(tmp_path/"junk.jsonl")])
    assert r.exit_code == 2 and r.output.startswith("error: ") and "2 lines skipped" in r.output, r.output
    assert r.output.count("\n") == 1


def test_monitor_drift_from_the_command_line(tmp_path, prepared):
    d, held, tweets = prepared
    log = _log(tmp_path/"requests.jsonl", [t for t, _ in held[:100]] + tweets[:100],
               [l for _, l in held[:100]] + ["sports"] * 100)
    r = runner.invoke(app, ["monitor", str(log), "--drift", str(d), "--window", "50", "--resamples", "100"])
    assert r.exit_code == 0, r.output
    out = json.loads((tmp_path/"monitor"/"monitor.json").read_text())["drift"]
    assert [w["alarm"] for w in out["windows"]] == [False, False, True, True]
    assert out["summary"]["first_alarm_request"] == 150 and (tmp_path/"monitor"/"drift.png").is_file()
    assert "## Drift from the training split" in r.output and "most unlike the training data" in r.output
    _log(tmp_path/"plain.jsonl", [None] * 60)
    r = runner.invoke(app, ["monitor", str(tmp_path/"plain.jsonl"), "--drift", str(d)])
    assert (r.exit_code, r.output) == (2, "error: the request log holds no request text: serve with --log-text to "
                                          "log it\n")
    r = runner.invoke(app, ["monitor", str(log), "--drift", str(tmp_path/"nope")])
    assert r.exit_code == 2 and "--drift" in r.output and r.output.count("\n") == 1
