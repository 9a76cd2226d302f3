"""Reliability, round 2 (issue 24): the data stage, jobs and synthetic data.

Each item of the issue that falls here is a test (`test_i24_...`) that failed on the code before its fix; the issue's
closing note lists them. Everything runs on files of a few records (and the tiny model where a tokenizer is needed).
"""
import bz2, gzip, json, os, shutil, subprocess, sys, zipfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import ROOT
from finetune_kit.cli import app
from finetune_kit.settings import make_config
from finetune_kit.files import KitError

FIX = ROOT/"tests/fixtures/data"
runner = CliRunner()
CLS_P = ["-p", "text_field", "body", "-p", "label_field", "topic"]
TOPICS = ("sport", "tech", "business")


def rows(n:int=24, labels=TOPICS, **extra) -> list[dict]:
    "`n` distinct classification records cycling through `labels`."
    words = "river council striker quarterly album league chip budget minister cinema vaccine orbit".split()
    return [{"text": f"Record {i}: a short story about the {words[i % len(words)]} and number {i * 7}.",
             "label": labels[i % len(labels)], **extra} for i in range(n)]

def jsonl(path:Path, recs:list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in recs)); return path

def snapshot(folder) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(Path(folder).rglob("*")) if p.is_file()}

def prep(*args):
    return runner.invoke(app, ["data", "prepare", *map(str, args)])

def error_line(r) -> str:
    "The one `error: ...` line of a command that failed with exit status 2, and no traceback."
    errs = [l for l in r.output.splitlines() if l.startswith("error: ")]
    assert r.exit_code == 2 and len(errs) == 1 and "Traceback" not in r.output, (r.exit_code, r.output, r.exception)
    return errs[0]

def warnings_of(r) -> list[str]:
    return [l for l in r.output.splitlines() if l.startswith("warning: ")]

@pytest.fixture
def good(tmp_path):
    "A good prepared folder `tmp_path/good` and its snapshot."
    src = jsonl(tmp_path/"src.jsonl", rows())
    r = prep(src, "--out", tmp_path/"good")
    assert r.exit_code == 0, r.output
    return tmp_path/"good", snapshot(tmp_path/"good")


# --- work lost -----------------------------------------------------------------------------------------------

def test_i24_prepare_refuses_a_folder_the_kit_did_not_write(tmp_path):
    "The user's own train.jsonl and card.md in --out are refused, kept byte for byte; --overwrite says replace them."
    src = jsonl(tmp_path/"src.jsonl", rows())
    mine = tmp_path/"mine"; mine.mkdir()
    (mine/"train.jsonl").write_text('{"my": "own work"}\n'); (mine/"card.md").write_text("# my notes\n")
    before = snapshot(mine)
    line = error_line(prep(src, "--out", mine))
    assert "mine" in line and "card.md, train.jsonl" in line and "--overwrite" in line, line
    assert snapshot(mine) == before
    r = prep(src, "--out", mine, "--overwrite")
    assert r.exit_code == 0, r.output
    assert (mine/"data.json").is_file() and (mine/"train.jsonl").read_bytes() != before["train.jsonl"]
    r = prep(src, "--out", mine)  # now the kit's folder: a rerun replaces it without being asked
    assert r.exit_code == 0, r.output
    other = tmp_path/"other"; other.mkdir(); (other/"notes.txt").write_text("unrelated\n")
    assert prep(src, "--out", other).exit_code == 0 and (other/"notes.txt").read_text() == "unrelated\n"

def test_i24_a_folder_written_before_the_kit_recorded_its_outputs_is_still_its_own(tmp_path, good):
    "A prepared folder without `.kit_outputs.json` (an older kit wrote it) is recognised by its data.json."
    out, _ = good
    (out/".kit_outputs.json").unlink()
    r = prep(tmp_path/"src.jsonl", "--out", out)
    assert r.exit_code == 0, r.output

@pytest.mark.parametrize("case", ["empty_file", "unusable_records", "wrong_task", "compressed_archive"])
def test_i24_zero_kept_records_fail_and_keep_the_old_folder(tmp_path, good, case):
    out, before = good
    src = tmp_path/"bad.jsonl"
    args = []
    if case == "empty_file": src.write_bytes(b"")
    elif case == "unusable_records": src.write_text('{"text": " ", "label": "a"}\n{"text": "x", "label": ""}\n')
    elif case == "wrong_task": src, args = tmp_path/"src.jsonl", ["-p", "task", "ner"]
    else:
        with zipfile.ZipFile(src, "w") as z: z.writestr("inner.jsonl", json.dumps(rows(1)[0]) + "\n")
    r = prep(src, "--out", out, *args)
    line = error_line(r)
    assert src.name in line or "no record was kept" in line, line
    assert snapshot(out) == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging folder left

def test_i24_zero_kept_says_why_in_one_line(tmp_path):
    src = tmp_path/"bad.jsonl"
    src.write_text('{"text": " ", "label": "a"}\n{"text": "x", "label": ""}\n')
    line = error_line(prep(src, "--out", tmp_path/"o"))
    assert "no record was kept" in line and "empty_field 2" in line and "bad.jsonl:1" in line, line
    assert not (tmp_path/"o").exists()

def _notebook(path:Path) -> Path:
    cell = {"cell_type": "code", "execution_count": None, "metadata": {"tags": ["parameters"]}, "outputs": [],
            "source": "seed = 1"}
    path.write_text(json.dumps({"cells": [cell], "metadata": {"kernelspec": {"name": "python3", "language": "python",
                                                                            "display_name": "Python 3"}},
                                "nbformat": 4, "nbformat_minor": 5}))
    return path

def test_i24_run_refuses_an_existing_output_and_the_workbook_itself(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    nb = _notebook(tmp_path/"nb.ipynb")
    before = nb.read_bytes()
    line = error_line(runner.invoke(app, ["run", str(nb), "-o", str(nb)]))
    assert "nb.ipynb" in line and "the workbook itself" in line, line
    line = error_line(runner.invoke(app, ["run", "nb.ipynb", "-o", str(nb)]))  # the same file by another name
    assert "the workbook itself" in line, line
    assert nb.read_bytes() == before
    (tmp_path/"report.md").write_text("my report\n")
    line = error_line(runner.invoke(app, ["run", str(nb), "-o", str(tmp_path/"report.md")]))
    assert "report.md" in line and "already exists" in line, line
    assert (tmp_path/"report.md").read_text() == "my report\n"
    from finetune_kit.jobs import job_plan
    from finetune_kit.config import ConfigError
    (tmp_path/"runs"/"r1").mkdir(parents=True); (tmp_path/"runs"/"r1"/"notebook.ipynb").write_text("{}")
    with pytest.raises(ConfigError, match="already exists"):  # the default place: a run id used before
        job_plan({"runs_dir": str(tmp_path/"runs"), "run_id": "r1"})


# --- silent wrong results ---------------------------------------------------------------------------------------

def test_i24_a_field_no_record_has_is_an_error_with_did_you_mean(tmp_path):
    "Typos in text_field/label_field no longer fall back to `text`/`label` (the wrong columns)."
    recs = [{**r, "content": r["text"].upper(), "category": "x" + r["label"]} for r in rows()]
    src = jsonl(tmp_path/"s.jsonl", recs)
    line = error_line(prep(src, "--out", tmp_path/"o", "-p", "text_field", "contnet", "-p", "label_field", "categroy"))
    assert "contnet" in line and "did you mean 'content'" in line and "s.jsonl" in line, line
    line = error_line(prep(src, "--out", tmp_path/"o", "-p", "text_field", "content", "-p", "label_field", "categroy"))
    assert "categroy" in line and "did you mean 'category'" in line, line
    line = error_line(prep(FIX/"classification.jsonl", "--out", tmp_path/"o"))  # the canonical name, absent
    assert "'text'" in line and "body" in line and "-p text_field" in line, line
    r = prep(src, "--out", tmp_path/"o", "-p", "text_field", "content", "-p", "label_field", "category")
    assert r.exit_code == 0, r.output
    train = [json.loads(l) for l in (tmp_path/"o/train.jsonl").read_text().splitlines()]
    assert all(t["label"].startswith("x") and t["prompt"][-1]["content"].split("Text: ")[1].isupper() for t in train)

def test_i24_csv_na_labels_are_missing_not_classes(tmp_path):
    na = ["NaN", "null", "None", "N/A", "NA"]
    lines = ["text,label"] + [f"{r['text']},{r['label']}" for r in rows(20)] + \
            [f"Another record {i} whose label is unknown,{v}" for i, v in enumerate(na)]
    (tmp_path/"s.csv").write_text("\n".join(lines) + "\n")
    r = prep(tmp_path/"s.csv", "--out", tmp_path/"o")
    assert r.exit_code == 0, r.output
    info = json.loads((tmp_path/"o/data.json").read_text())
    assert info["labels"] == sorted(TOPICS), info["labels"]
    assert info["counts"]["rejected_by_reason"] == {"missing_field": 5}
    rej = [json.loads(l) for l in (tmp_path/"o/rejected.jsonl").read_text().splitlines()]
    assert {x["field"] for x in rej} == {"label"} and all("missing value" in x["detail"] for x in rej), rej
    assert "missing_field 5" in r.output

def test_i24_a_prepared_folder_inside_a_label_folder_is_not_read_as_a_label(tmp_path):
    corpus = tmp_path/"corpus"; shutil.copytree(FIX/"folder", corpus)
    for _ in range(2):
        r = prep(corpus, "--out", corpus/"prepared")
        assert r.exit_code == 0, r.output
    info = json.loads((corpus/"prepared/data.json").read_text())
    assert info["labels"] == ["ham", "spam"] and info["counts"]["read"] == 4, info["counts"]

def test_i24_a_single_record_label_is_said_on_the_console_and_keeps_stratification(tmp_path):
    recs = rows(60, labels=("sport", "tech")) + [{"text": "A lone record about a sprot match.", "label": "sprot"}]
    r = prep(jsonl(tmp_path/"s.jsonl", recs), "--out", tmp_path/"o")
    assert r.exit_code == 0, r.output
    w = " ".join(warnings_of(r))
    assert "sprot" in w and "1 record" in w, r.output
    info = json.loads((tmp_path/"o/data.json").read_text())
    assert info["split"]["stratified"], info["split"]  # the other labels are still stratified

def test_i24_label_conflicts_many_labels_and_empty_splits_are_said_on_the_console(tmp_path):
    recs = rows(20) + [{"text": rows(1)[0]["text"], "label": "tech"}]  # the same text, another label
    r = prep(jsonl(tmp_path/"c.jsonl", recs), "--out", tmp_path/"c")
    assert r.exit_code == 0 and any("disagree" in w for w in warnings_of(r)), r.output
    many = [{"text": f"Record {i} with its own words {i * 13}", "label": f"id-{i}"} for i in range(300)]
    r = prep(jsonl(tmp_path/"m.jsonl", many), "--out", tmp_path/"m")
    assert r.exit_code == 0 and any("300 distinct labels" in w for w in warnings_of(r)), r.output
    r = prep(jsonl(tmp_path/"s.jsonl", rows(40)), "--out", tmp_path/"s", "-p", "max_chars", "3")
    assert r.exit_code == 0, r.output
    w = " ".join(warnings_of(r))
    assert "validation split is empty" in w and "max_chars 3" in w, r.output

def test_i24_an_empty_training_split_says_why(tmp_path):
    "Every record over the token budget: the run fails saying so, not 'the training split is empty'."
    from finetune_kit.train import train
    src = jsonl(tmp_path/"s.jsonl", rows(12))
    cfg = make_config({"base_model": "tiny-test", "source": str(src), "max_length": 16, "report_to": "none",
                       "runs_dir": str(tmp_path/"runs")}, settings=False)
    with pytest.raises(KitError) as e: train(cfg)
    assert "over_token_budget" in str(e.value) and "max_length" in str(e.value), str(e.value)

def test_i24_synth_with_nothing_listening_fails_in_one_line(tmp_path):
    src = jsonl(tmp_path/"seeds.jsonl", rows(6))
    r = runner.invoke(app, ["synth", "generate", str(src), "-o", str(tmp_path/"s"), "-d", "topics", "--n", "4",
                            "--endpoint", "http://127.0.0.1:9", "--max-retries", "0", "--no-progress"])
    line = error_line(r)
    assert "127.0.0.1:9" in line and "no answer" in line and "ConnectError" in line, line

def test_i24_synth_rerun_retries_the_failed_prompts(tmp_path):
    from finetune_kit.data.synth import synthesize
    from test_synth import DESC, SEEDS, story
    def flaky(prompts):  # every other prompt fails
        return [story(k) if k % 2 else ConnectionError("down") for k in range(len(prompts))]
    run = tmp_path/"run"
    info = synthesize("classification", DESC, SEEDS, flaky, run, n=6, batch_size=6, max_retries=0, progress=False)
    assert info["counts"]["failed"] == 3 and info["counts"]["kept"] == 3
    calls = []
    def back(prompts):
        calls.append(len(prompts)); return [story(100 + k) for k in range(len(prompts))]
    info = synthesize("classification", DESC, SEEDS, back, run, n=6, batch_size=6, max_retries=0, progress=False)
    c = info["counts"]
    assert calls == [3] and c["failed"] == 0 and c["prompts"] == 6 and c["kept"] == 6 and c["reconciled"], c
    assert c["tries"] == 9 and c["errors"] == 3  # the first run's tries still count


# --- tracebacks and unclear errors ------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["self", "pair"])
def test_i24_a_symlink_loop_as_source_is_one_line(tmp_path, kind):
    if kind == "self": os.symlink("loop.jsonl", tmp_path/"loop.jsonl"); src = tmp_path/"loop.jsonl"
    else: os.symlink("b.jsonl", tmp_path/"a.jsonl"); os.symlink("a.jsonl", tmp_path/"b.jsonl"); src = tmp_path/"a.jsonl"
    line = error_line(prep(src, "--out", tmp_path/"o"))
    assert src.name in line and "symlink loop" in line, line

def test_i24_a_symlink_loop_inside_a_label_folder_is_a_rejected_record(tmp_path):
    src = tmp_path/"corpus"; shutil.copytree(FIX/"folder", src); os.symlink("x.txt", src/"ham"/"x.txt")
    r = prep(src, "--out", tmp_path/"o")
    assert r.exit_code == 0 and "unreadable_record 1" in r.output, r.output
    (rej,) = [json.loads(l) for l in (tmp_path/"o/rejected.jsonl").read_text().splitlines()]
    assert rej["source"].endswith("x.txt") and "symlink loop" in rej["detail"], rej

@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".json"])
def test_i24_an_empty_source_is_an_error_in_every_format(tmp_path, suffix):
    (tmp_path/f"e{suffix}").write_bytes(b"")
    line = error_line(prep(tmp_path/f"e{suffix}", "--out", tmp_path/"o"))
    assert f"e{suffix}" in line and "empty" in line, line
    (tmp_path/"blank.jsonl").write_text("\n  \n\n")
    assert "empty" in error_line(prep(tmp_path/"blank.jsonl", "--out", tmp_path/"o"))

@pytest.mark.parametrize("how", ["gzip", "bz2", "gzip_named_gz"])
def test_i24_a_compressed_source_is_read(tmp_path, how):
    "gzip and bzip2 (and xz) files are read whatever their name says; the records are the plain file's."
    plain = "".join(json.dumps(r) + "\n" for r in rows()).encode()
    data = bz2.compress(plain) if how == "bz2" else gzip.compress(plain)
    src = tmp_path/("s.jsonl.gz" if how == "gzip_named_gz" else "s.jsonl")
    src.write_bytes(data)
    r = prep(src, "--out", tmp_path/"o")
    assert r.exit_code == 0 and "rejected:" not in r.output, r.output
    assert json.loads((tmp_path/"o/data.json").read_text())["counts"]["kept"] == 24

def test_i24_an_archive_is_one_line_naming_it(tmp_path):
    src = tmp_path/"s.jsonl"
    with zipfile.ZipFile(src, "w") as z: z.writestr("s.jsonl", "".join(json.dumps(r) + "\n" for r in rows()))
    line = error_line(prep(src, "--out", tmp_path/"o"))
    assert "s.jsonl" in line and "zip archive" in line, line

def test_i24_an_offline_tokenizer_error_names_the_tokenizer(tmp_path):
    line = error_line(prep(jsonl(tmp_path/"s.jsonl", rows()), "--out", tmp_path/"outdir", "--tokenizer",
                           "nosuch-org/nosuch-model"))
    assert "nosuch-org/nosuch-model" in line and "outdir" not in line, line


# --- small ------------------------------------------------------------------------------------------------------

def test_i24_stale_staging_folders_with_a_dash_in_the_name_are_cleaned(tmp_path):
    from finetune_kit.files import atomic_folder
    dead = subprocess.Popen(["true"]); dead.wait()  # a process that has ended: its pid is free
    pid = dead.pid
    stale = tmp_path/f".my-data.staging-{pid}-ab_c9"; stale.mkdir(); (stale/"big.bin").write_bytes(b"x" * 1000)
    alive = tmp_path/f".my-data.staging-{os.getpid()}-zz"; alive.mkdir()
    with atomic_folder(tmp_path/"my-data") as tmp: (tmp/"a.txt").write_text("a")
    assert not stale.exists() and alive.exists()

def test_i24_out_refuses_a_filesystem_root_home_or_project_root(tmp_path, monkeypatch):
    "Checked on stand-ins (a home folder and projects under tmp_path): a regression must not write into / or ~."
    from finetune_kit.files import check_out_folder
    with pytest.raises(KitError, match="filesystem root"): check_out_folder(Path("/"))
    src = jsonl(tmp_path/"s.jsonl", rows())
    home = tmp_path/"home"; home.mkdir(); monkeypatch.setenv("HOME", str(home))
    assert "home folder" in error_line(prep(src, "--out", home))
    for marker in ("settings.ini", "pyproject.toml"):
        proj = tmp_path/f"proj{marker}"; proj.mkdir(); (proj/marker).write_text("")
        monkeypatch.chdir(proj)
        assert "project root" in error_line(prep(src, "--out", ".")), marker
        assert sorted(p.name for p in proj.iterdir()) == [marker]
    assert prep(src, "--out", proj/"data").exit_code == 0  # a folder inside the project is fine

@pytest.mark.parametrize("opt,says", [(["--shots", "0"], "--shots"), (["--temperature", "-1"], "--temperature"),
                                      (["--top-p", "1.5"], "--top-p"), (["--n", "0"], "--n"),
                                      (["--max-retries", "-1"], "--max-retries")])
def test_i24_synth_refuses_out_of_range_options(tmp_path, opt, says):
    src = jsonl(tmp_path/"seeds.jsonl", rows(6))
    r = runner.invoke(app, ["synth", "generate", str(src), "-o", str(tmp_path/"s"), "-d", "x", "--endpoint",
                            "http://127.0.0.1:9", *opt])
    assert says in error_line(r)
    assert not (tmp_path/"s").exists()
