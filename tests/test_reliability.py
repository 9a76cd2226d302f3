"""Reliability (issue 15): never lose a user's data or work, never a traceback, every value checked.

Each numbered reproduction of the issue is a test here (`test_issue_NN_...`) that failed on the code before the fix;
then the table-driven bad-input test (every command: bad paths, bad values, damaged files -> exit 2 and one line
naming the file, record or parameter) and hypothesis tests that feed every reader arbitrary bytes, nesting and sizes.
"""
import csv, json, math, os, shutil, subprocess, sys, time
from pathlib import Path

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from typer.testing import CliRunner

from helpers import CLS, FIX, ROOT, TRAIN_SMALL, lines, tiny_config
from finetune_kit.cli import app
from finetune_kit.config import ConfigError, check_param
from finetune_kit.settings import make_config
from finetune_kit.files import KitError

runner = CliRunner()
TINY = {**TRAIN_SMALL, "per_device_train_batch_size": 4}

def snapshot(folder) -> dict:
    "Every file under `folder` with its bytes."
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(Path(folder).rglob("*")) if p.is_file()}

def prep_cli(*args):
    return runner.invoke(app, ["data", "prepare", *map(str, args)])

def one_error_line(r) -> str:
    "The single `error: ...` line of a failed command (and nothing that looks like a traceback)."
    out = r.output
    errs = [l for l in out.splitlines() if l.startswith("error: ")]
    assert r.exit_code == 2 and len(errs) == 1 and "Traceback" not in out, (r.exit_code, out, r.exception)
    return errs[0]


# --- 1, 2. inputs are sacred, outputs atomic --------------------------------------------------------------

CLS_P = ["-p", "text_field", "body", "-p", "label_field", "topic"]

def _prepared(tmp_path):
    "A good preparation of the classification fixture in `tmp_path/o`, and its snapshot."
    r = prep_cli(FIX/"classification.jsonl", "--out", tmp_path/"o", *CLS_P)
    assert r.exit_code == 0, r.output
    return tmp_path/"o", snapshot(tmp_path/"o")

def test_issue_01_prepare_into_the_folder_of_its_source_never_deletes_it(tmp_path):
    d = tmp_path/"d"; d.mkdir()
    shutil.copy(FIX/"classification.jsonl", d/"train.jsonl")
    before = (d/"train.jsonl").read_bytes()
    line = one_error_line(prep_cli(d/"train.jsonl", "--out", d, *CLS_P))
    assert "train.jsonl" in line and "would replace this source" in line
    assert (d/"train.jsonl").read_bytes() == before and sorted(p.name for p in d.iterdir()) == ["train.jsonl"]
    shutil.copy(FIX/"classification.jsonl", d/"raw.jsonl")  # a source beside the outputs is read, never touched
    r = prep_cli(d/"raw.jsonl", "--out", tmp_path/"d2", *CLS_P)
    assert r.exit_code == 0 and (d/"raw.jsonl").read_bytes() == before

@pytest.mark.parametrize("bad", [["nosuch.jsonl"], ["-p", "val_size", "1.5"], ["-p", "group_field", "nosuch"]])
def test_issue_02_a_failed_rerun_keeps_the_previous_preparation(tmp_path, bad):
    out, before = _prepared(tmp_path)
    src = [tmp_path/bad[0]] if not bad[0].startswith("-") else [FIX/"classification.jsonl", *bad]
    line = one_error_line(prep_cli(*src, "--out", out, *CLS_P))
    assert any(w in line for w in ("nosuch", "val_size"))
    assert snapshot(out) == before and [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []

@pytest.mark.parametrize("when", ["reading", "writing"])
def test_issue_02_ctrl_c_keeps_the_previous_preparation_and_never_leaves_a_cut_split(tmp_path, monkeypatch, when):
    import finetune_kit.data.prepare as P
    out, before = _prepared(tmp_path)
    if when == "reading":
        real = P.read_source
        def reader(*a, **kw):
            for i, r in enumerate(real(*a, **kw)):
                if i == 3: raise KeyboardInterrupt
                yield r
        monkeypatch.setattr(P, "read_source", reader)
    else:
        real = P.write_jsonl
        def writer(rows, path, *a, **kw):
            real(list(rows)[:2], path, *a, **kw)  # a cut file...
            raise KeyboardInterrupt  # ...and Ctrl-C
        monkeypatch.setattr(P, "write_jsonl", writer)
    for folder in (out, tmp_path/"fresh"):
        with pytest.raises(KeyboardInterrupt):
            P.prepare_data(make_config({"text_field": "body", "label_field": "topic"}, settings=False), folder,
                           sources=[FIX/"classification.jsonl"])
    assert snapshot(out) == before
    assert not (tmp_path/"fresh"/"train.jsonl").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging folder left behind

# --- 3. human review work is never overwritten; a failed or empty rerun never replaces a good evaluation ---

def _eval(cfg, out, tuned, **kw):
    from finetune_kit.evaluate import evaluate
    recs = lines(CLS/"test.jsonl")
    return evaluate(cfg, CLS, out_dir=out, outputs={"base": ["sport"] * len(recs), "tuned": tuned(recs)},
                    progress=False, **kw)

def _eval_cfg(**kw):
    return tiny_config(bootstrap_samples=20, review_samples=6, **kw)

def test_issue_03_rerun_never_overwrites_a_filled_review_sheet_and_a_stale_sheet_is_refused(tmp_path):
    from finetune_kit.evaluate import EvalError, import_review
    ev = tmp_path/"eval"
    _eval(_eval_cfg(), ev, lambda rs: [r["reference"] for r in rs])
    sheet = pd.read_csv(ev/"review_sheet.csv", dtype=str, keep_default_na=False)
    sheet["verdict"] = "1"; sheet.to_csv(ev/"review_sheet.csv", index=False)
    shutil.copy(ev/"review_sheet.csv", tmp_path/"saved_sheet.csv")
    first = import_review(ev/"review_sheet.csv")
    before = snapshot(ev)
    res = _eval(_eval_cfg(), ev, lambda rs: ["tech"] * len(rs))  # a rerun with other answers
    assert res.out_dir == tmp_path/"eval-2" and snapshot(ev) == before  # the human verdicts are kept
    assert any("earlier one is kept" in n for n in res.metrics["notes"])
    with pytest.raises(EvalError, match="another evaluation"):  # the old sheet against the new key: refused
        import_review(tmp_path/"saved_sheet.csv", key=tmp_path/"eval-2"/"review_key.json", out=tmp_path/"r.json")
    assert import_review(ev/"review_sheet.csv", out=tmp_path/"again.json")["win"] == first["win"]

def test_issue_03_max_samples_0_is_refused_and_a_rerun_leaves_no_stale_plots(tmp_path):
    ev = tmp_path/"eval"
    _eval(_eval_cfg(slice_field="desk"), ev, lambda rs: [r["reference"] for r in rs])
    before = snapshot(ev)
    for v in ("0", "-1"):
        args = ["evaluate", "run", str(CLS), "--out", str(ev), "-p", "max_eval_samples", v]
        line = one_error_line(runner.invoke(app, args))
        assert "max_eval_samples" in line and snapshot(ev) == before
    assert (ev/"slices.png").exists()
    _eval(_eval_cfg(), ev, lambda rs: [r["reference"] for r in rs])  # no slice_field now: its plot goes too
    assert not (ev/"slices.png").exists() and (ev/"comparison.png").exists()

# --- 4, 5. structural damage is reported, never merged into other records ---------------------------------

ROWS = ["The cat sat on the mat today", "Stocks fell sharply this morning", "The team won the final match",
        "Rain is expected all week long"]

@pytest.mark.parametrize("sep,suffix", [("\t", "tsv"), (",", "csv")])
def test_issue_04_an_unbalanced_quote_rejects_its_row_and_keeps_the_rows_after_it(tmp_path, sep, suffix):
    from finetune_kit.data import prepare_data
    src = tmp_path/f"q.{suffix}"
    src.write_text(f"text{sep}label\n\"Hello world said nobody{sep}a\n" +
                   "".join(f"{t}{sep}{'abab'[i]}\n" for i, t in enumerate(ROWS)))
    info = prepare_data(make_config({"val_size": 0, "test_size": 0, "max_records": None}, settings=False),
                        tmp_path/"o", sources=[src])
    kept = sorted(r["prompt"][-1]["content"].rsplit("Text: ", 1)[1] for r in lines(tmp_path/"o/train.jsonl"))
    assert kept == sorted(ROWS)
    (rej,) = lines(tmp_path/"o/rejected.jsonl")
    assert (rej["line"], rej["reason"]) == (2, "malformed_row") and "quote opened on line 2" in rej["detail"]

def test_issue_05_a_conll_row_missing_its_last_column_is_rejected_not_read_as_a_tag(tmp_path):
    from finetune_kit.data import prepare_data
    src = tmp_path/"c.conll"
    src.write_text("EU NNP B-NP B-ORG\nrejects VBZ B-VP O\nGerman JJ B-NP B-MISC\nin IN B-PP\ncall NN I-NP O\n\n"
                   "Peter NNP B-NP B-PER\nBlackburn NNP I-NP I-PER\n")
    info = prepare_data(make_config({"task": "ner", "val_size": 0, "test_size": 0, "max_records": None},
                                    settings=False), tmp_path/"o", sources=[src])
    assert info["entity_types"] == ["PER"]  # no invented type 'PP'
    (rej,) = lines(tmp_path/"o/rejected.jsonl")
    assert rej["reason"] == "malformed_row" and rej["detail"] == "line 4: 3 columns, the file's lines have 4"

# --- 6. every parameter has a type and a range, checked before anything runs -------------------------------

@pytest.mark.parametrize("name,value,says", [
    ("learning_rate", "0", "must be > 0"), ("learning_rate", "-1e-4", "must be > 0"),
    ("learning_rate", "nan", "finite"), ("num_train_epochs", "-1", "must be > 0"), ("max_chars", "-5", ">= 1"),
    ("lora_r", "0", ">= 1"), ("per_device_train_batch_size", "0", ">= 1"), ("max_records", "-5", ">= 1"),
    ("seed", "-1", "[0, 4294967295]"), ("max_eval_samples", "-1", ">= 1"), ("eval_batch_size", "0", ">= 1"),
    ("val_size", "1.5", "[0, 1)"), ("near_dup_threshold", "2", "1"),
])
def test_issue_06_out_of_range_parameters_fail_before_anything_runs(tmp_path, name, value, says):
    for args in (["train", "-p", "runs_dir", str(tmp_path), "-p", name, value],
                 ["run", str(ROOT/"nbs/workbooks/finetune.ipynb"), "-p", "runs_dir", str(tmp_path), "-p", name, value]):
        line = one_error_line(runner.invoke(app, args))
        assert f"parameter {name} " in line and says in line, line
    assert list(tmp_path.iterdir()) == []  # no run folder was made
    with pytest.raises(ConfigError): check_param(name, value, coerce=True)  # the workbook's path
    (tmp_path/"s.yaml").write_text(f"method: grid\nmetric: {{name: train/loss, goal: minimize}}\n"
                                   f"parameters:\n  {name}: {{values: [{value}]}}\n")
    from finetune_kit.sweeps import load_sweep
    with pytest.raises(KitError, match=name): load_sweep(tmp_path/"s.yaml")

def test_issue_06_learning_rate_0_is_refused_and_none_means_the_default():
    with pytest.raises(ConfigError, match="learning_rate must be > 0"):
        make_config({"learning_rate": 0}, settings=False)
    assert make_config({"learning_rate": None}, settings=False).train.learning_rate is None

# --- 7. run on a notebook that cannot take the parameters --------------------------------------------------

def test_issue_07_run_on_a_notebook_without_a_parameters_cell_refuses_the_values(tmp_path):
    nb = json.loads((ROOT/"nbs/workbooks/finetune.ipynb").read_text())
    for c in nb["cells"]: c.get("metadata", {}).pop("tags", None)
    (tmp_path/"untagged.ipynb").write_text(json.dumps(nb))
    line = one_error_line(runner.invoke(app, ["run", str(tmp_path/"untagged.ipynb"), "-p", "seed", "3"]))
    assert "untagged.ipynb: no cell is tagged 'parameters', so seed would be ignored" in line
    (tmp_path/"notes.ipynb").write_text("not json")
    assert "notes.ipynb: not a notebook" in one_error_line(runner.invoke(app, ["run", str(tmp_path/"notes.ipynb")]))
    assert "is a folder" in one_error_line(runner.invoke(app, ["run", str(tmp_path)]))

# --- 8. NaN, huge records, label case variants, duplicate headers -------------------------------------------

def test_issue_08_nan_and_infinity_never_reach_the_splits(tmp_path):
    from finetune_kit.data import prepare_data
    src = tmp_path/"n.jsonl"
    src.write_text('{"text": "alpha beta gamma", "label": "a", "score": NaN}\n'
                   '{"text": "delta epsilon zeta", "label": "b", "score": Infinity, "w": -Infinity}\n'
                   '{"text": "eta theta iota", "label": "a"}\n')  # one clean record: nothing kept is an error now
    prepare_data(make_config({"val_size": 0, "test_size": 0, "max_records": None}, settings=False), tmp_path/"o",
                 sources=[src])
    text = (tmp_path/"o/train.jsonl").read_text()
    for l in text.splitlines(): json.loads(l, parse_constant=lambda c: pytest.fail(f"{c} in the split"))
    assert "NaN" not in text and "Infinity" not in text

def test_issue_08_a_huge_jsonl_record_is_rejected_without_a_tokenizer_as_in_csv(tmp_path):
    from finetune_kit.data import prepare_data
    big = "word " * 400_000
    (tmp_path/"b.jsonl").write_text(json.dumps({"text": "fine text", "label": "a"}) + "\n" +
                                    json.dumps({"text": big, "label": "b"}) + "\n")
    pd.DataFrame({"text": ["fine text", big], "label": ["a", "b"]}).to_csv(tmp_path/"b.csv", index=False)
    for src in ("b.jsonl", "b.csv"):
        info = prepare_data(make_config({"val_size": 0, "test_size": 0, "max_records": None, "max_chars": None},
                                        settings=False), tmp_path/src.replace(".", "_"), sources=[tmp_path/src])
        assert info["counts"]["rejected_by_reason"] == {"too_large": 1}, (src, info["counts"])

def test_issue_08_label_case_variants_warn(tmp_path):
    src = tmp_path/"l.jsonl"
    src.write_text("".join(json.dumps({"text": f"text number {i} about things", "label": l}) + "\n"
                           for i, l in enumerate(["Sports", "sports", "tech", "tech"] * 3)))
    r = prep_cli(src, "--out", tmp_path/"o", "-p", "val_size", "0", "-p", "test_size", "0")
    assert r.exit_code == 0, r.output
    want = "labels 'Sports' and 'sports' differ only in case or spacing"
    assert f"warning: {want}" in r.output
    assert any(want in w for w in json.loads((tmp_path/"o/data.json").read_text())["warnings"])
    assert want in (tmp_path/"o/card.md").read_text()

def test_issue_08_a_duplicate_csv_header_is_an_error_naming_the_column(tmp_path):
    (tmp_path/"d.csv").write_text("text,label,text\nhello there,a,other\nbye now,b,more\n")
    line = one_error_line(prep_cli(tmp_path/"d.csv", "--out", tmp_path/"o"))
    assert "d.csv" in line and "'text'" in line and not (tmp_path/"o").exists()


def test_issue_03_review_make_never_replaces_a_filled_sheet(tmp_path):
    ev = tmp_path/"eval"
    _eval(_eval_cfg(), ev, lambda rs: [r["reference"] for r in rs])
    sheet = pd.read_csv(ev/"review_sheet.csv", dtype=str, keep_default_na=False)
    sheet["verdict"] = "2"; sheet.to_csv(ev/"review_sheet.csv", index=False)
    before = snapshot(ev)
    line = one_error_line(runner.invoke(app, ["review", "make", str(ev), "-p", "seed", "7"]))
    assert "review_sheet.csv holds a filled review sheet" in line and snapshot(ev) == before


def test_every_numeric_parameter_has_a_range():
    from finetune_kit.config import param_specs
    bare = [n for n, s in param_specs().items()
            if {int, float} & set(getattr(s.type, "__args__", (s.type,))) and not s.limits]
    assert bare == []


# --- tracebacks: each command line the issue lists is one line now ------------------------------------------

def test_issue_tb_a_record_that_makes_the_parser_raise_is_quarantined_and_the_rest_prepared(tmp_path):
    from finetune_kit.data import prepare_data
    good = [json.dumps({"text": f"text number {i} about things", "label": "ab"[i % 2]}) for i in range(6)]
    deep = '{"text": ' + "[" * 100_000 + "]" * 100_000 + ', "label": "a"}'
    (tmp_path/"s.jsonl").write_text("\n".join(good[:3] + [deep] + good[3:]) + "\n")
    info = prepare_data(make_config({"val_size": 0, "test_size": 0, "max_records": None}, settings=False),
                        tmp_path/"o", sources=[tmp_path/"s.jsonl"])
    assert info["counts"]["kept"] == 6 and info["counts"]["rejected_by_reason"] == {"too_large": 1}
    (rej,) = lines(tmp_path/"o/rejected.jsonl")
    assert rej["line"] == 4 and "nested too deeply" in rej["detail"]

ISSUE_TRACEBACKS = [  # the issue's list, with today's spelling of each option
    ("data prepare {fix} --out {d}/o -p max_records -5", "parameter max_records must be >= 1"),
    ("data prepare {fix} --out {d}/o -p seed -1", "parameter seed must be in [0, 4294967295]"),
    ("data prepare {fix} --out {d}/o --tokenizer nosuch-model", "nosuch-model: unknown model name"),
    ("evaluate run {cls} -p max_eval_samples -1", "parameter max_eval_samples must be >= 1"),
    ("train -p per_device_train_batch_size 0", "parameter per_device_train_batch_size must be >= 1"),
    ("sweep {d}/latin1.yaml", "latin1.yaml: not UTF-8 (byte 0xe9 on line 2): save it as UTF-8"),
    ("run {d}/notjson.ipynb", "notjson.ipynb: not a notebook"),
    ("run {d}", "is a folder, not a notebook"),
    ("train --resume {d}/run", "checkpoint-4-backup: Trainer's checkpoint rotation takes a folder named"),
]

@pytest.mark.parametrize("cmd,says", ISSUE_TRACEBACKS, ids=[c for c, _ in ISSUE_TRACEBACKS])
def test_issue_tb_listed_command_is_one_line_exit_2(tmp_path_factory, cmd, says, monkeypatch):
    from test_bad_input import damaged
    d = tmp_path_factory.getbasetemp()/"issue_tb"
    if not d.exists(): d.mkdir(); damaged(d)
    monkeypatch.chdir(d)
    args = cmd.format(d=d, fix=FIX/"classification.jsonl", cls=CLS).split()
    assert says in one_error_line(runner.invoke(app, args))


# --- 9. resume reports the whole run; a finished run is not trained again; a damaged checkpoint falls back -------

def _train(tmp, run_id, **kw):
    from finetune_kit.train import train
    return train(tiny_config(TINY, runs_dir=str(tmp), run_id=run_id, **kw))

def _interrupt_after(run_dir, step):
    "Leave `run_dir` as a run killed after its checkpoint at `step` (later checkpoints, adapter and summary gone)."
    for ck in (run_dir/"checkpoints").glob("checkpoint-*"):
        if int(ck.name.split("-")[1]) > step: shutil.rmtree(ck)
    shutil.rmtree(run_dir/"adapter"); (run_dir/"summary.json").unlink()

@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    "One uninterrupted run of 8 steps, checkpoints every 4."
    return _train(tmp_path_factory.mktemp("runs"), "straight", max_steps=8, save_steps=4, save_total_limit=3)

def test_issue_09_resume_reports_whole_run_loss_and_tokens(straight, tmp_path):
    from finetune_kit.train import train
    res = _train(tmp_path, "cut", max_steps=8, save_steps=4, save_total_limit=3)
    _interrupt_after(res.run_dir, 4)
    s = train(None, run_dir=res.run_dir, resume=True).summary
    want = straight.summary
    assert s["steps"] == 8 and s["train_loss"] == pytest.approx(want["train_loss"], abs=1e-6)
    assert s["num_tokens"] == want["num_tokens"] > 0
    rows = [json.loads(l) for l in (res.run_dir/"metrics.jsonl").read_text().splitlines()]
    assert [r["num_tokens"] for r in rows if "num_tokens" in r] == [r["num_tokens"] for r in
            map(json.loads, (straight.run_dir/"metrics.jsonl").read_text().splitlines()) if "num_tokens" in r]

def test_issue_09_resume_on_a_finished_run_trains_nothing(straight, tmp_path, capsys):
    from finetune_kit.train import train
    run = tmp_path/"done"; shutil.copytree(straight.run_dir, run)
    before = snapshot(run)
    res = train(None, run_dir=run, resume=True)
    assert res.summary["steps"] == 8 and snapshot(run) == before
    assert "finished at step 8: nothing to resume" in capsys.readouterr().out

def test_issue_09_damaged_newest_checkpoint_falls_back_to_the_older_one(straight, tmp_path, capsys):
    from finetune_kit.train import train
    res = _train(tmp_path, "damaged", max_steps=8, save_steps=4, save_total_limit=3)
    _interrupt_after(res.run_dir, 8)  # killed after its last checkpoint
    ck = res.run_dir/"checkpoints"
    with open(ck/"checkpoint-8"/"adapter_model.safetensors", "r+b") as f: f.truncate(1000)
    s = train(None, run_dir=res.run_dir, resume=True).summary
    assert "note: checkpoint-8 is damaged (adapter_model.safetensors: " in capsys.readouterr().out
    assert s["steps"] == 8 and s["train_loss"] == pytest.approx(straight.summary["train_loss"], abs=1e-6)
    assert (ck/"damaged-checkpoint-8").is_dir()  # kept for a look, out of Trainer's way
    with open(ck/"checkpoint-8"/"optimizer.pt", "r+b") as f: f.truncate(2000)  # the optimizer this time
    _interrupt_after(res.run_dir, 8)
    assert train(None, run_dir=res.run_dir, resume=True).summary["steps"] == 8


# --- 10. failed sweep trials: exit non-zero, --retry-failed, the metric checked before any trial --------------

def _flaky_sweep(tmp_path, metric="train/loss"):
    "A two-trial grid over a tiny notebook that fails until the file FLAKY_FIXED exists, and the sweep file."
    import nbformat
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell('lora_r = 8\nruns_dir = "runs"\nrun_id = "x"', metadata={"tags": ["parameters"]})
    nb.cells = [params,
                nbformat.v4.new_code_cell(
                    "import json, os, pathlib\n"
                    "if not os.path.exists(os.environ['FLAKY_FIXED']): raise RuntimeError('disk full')\n"
                    "d = pathlib.Path(runs_dir)/run_id; d.mkdir(parents=True, exist_ok=True)\n"
                    "(d/'summary.json').write_text(json.dumps({'train_loss': lora_r / 10}))")]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, tmp_path/"flaky.ipynb")
    spec = {"name": "flaky", "method": "grid", "metric": {"name": metric, "goal": "minimize"},
            "parameters": {"lora_r": {"values": [2, 4]}},
            "command": ["finetune-kit", "run", str(tmp_path/"flaky.ipynb"), "--params-json", "${args_json_file}"]}
    (tmp_path/"flaky.yaml").write_text(json.dumps(spec))
    return ["sweep", str(tmp_path/"flaky.yaml"), "--dir", str(tmp_path/"sweep")]

@pytest.mark.slow  # each trial is a notebook job: a Jupyter kernel
def test_issue_10_failed_trials_exit_non_zero_and_retry_failed_runs_them_again(tmp_path, monkeypatch):
    monkeypatch.setenv("FLAKY_FIXED", str(tmp_path/"fixed"))
    args = _flaky_sweep(tmp_path)
    r = runner.invoke(app, args)
    errs = [l for l in r.output.splitlines() if l.startswith("error: ")]
    assert r.exit_code == 1 and errs == ["error: 2 of 2 trials failed (trial 0: cell 3 failed: RuntimeError: "
                                         "disk full); fix the cause and rerun with --retry-failed"], r.output
    (tmp_path/"fixed").touch()  # the cause is fixed
    r = runner.invoke(app, args)  # a plain rerun runs nothing again, and says how
    assert r.exit_code == 1 and "note: trials 0, 1 failed before; --retry-failed runs them again" in r.output
    assert "started" not in r.output
    r = runner.invoke(app, [*args, "--retry-failed"])
    assert r.exit_code == 0, r.output
    assert "trials 0, 1 failed before: queued again" in r.output and "best: trial 2, train/loss = 0.2" in r.output
    r = runner.invoke(app, [*args, "--retry-failed"])  # nothing left to retry
    assert r.exit_code == 0 and "queued again" not in r.output and "started" not in r.output

def test_issue_10_a_metric_no_trial_logs_stops_the_sweep_before_any_trial(tmp_path):
    args = _flaky_sweep(tmp_path, metric="eval/tuned/f1_macro")
    line = one_error_line(runner.invoke(app, args))
    assert line.startswith("error: metric.name: no trial logs 'eval/tuned/f1_macro' (did you mean eval/tuned/macro_f1")
    assert not (tmp_path/"sweep").exists()
