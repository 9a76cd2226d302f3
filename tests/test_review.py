"""Human review, one stack with two uses (issue 22): the synthetic-record queue and the blind answer review share the
sheet, the page, Label Studio and the verdict reading. The issue-24 cases: no command replaces a reviewer's work or the
queue, and an item is one verdict however often it appears."""
import json
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from finetune_kit.cli import app
from finetune_kit.data.queue import add_to_queue, read_queue, review_item
from finetune_kit.evaluate import make_review_sheet, write_review

ROOT = Path(__file__).resolve().parents[1]
CLS = ROOT/"tests/fixtures/evaluate/cls"
runner = CliRunner()


def snapshot(folder) -> dict:
    "Every file under `folder` with its bytes."
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(Path(folder).rglob("*")) if p.is_file()}

def one_error_line(r) -> str:
    "The single `error: ...` line of a failed command (and nothing that looks like a traceback)."
    errs = [l for l in r.output.splitlines() if l.startswith("error: ")]
    assert r.exit_code == 2 and len(errs) == 1 and "Traceback" not in r.output, (r.exit_code, r.output, r.exception)
    return errs[0]

def cli(*args): return runner.invoke(app, [str(a) for a in args])

def queue_run(folder:Path, n:int=4) -> Path:
    "A synth run folder whose queue holds `n` pending classification candidates."
    folder.mkdir(parents=True, exist_ok=True)
    add_to_queue(folder/"review.jsonl", [{"id": f"c{i}", "task": "classification",
                                          "record": {"text": f"candidate text number {i}", "label": "sport"}}
                                         for i in range(n)])
    return folder

def fill(sheet:Path, changes:dict):
    "Fill the queue sheet's rows: `{id: {column: value}}`."
    df = pd.read_csv(sheet, dtype=str, keep_default_na=False, encoding="utf-8-sig")
    for item, cols in changes.items():
        for c, v in cols.items(): df.loc[df["id"] == item, c] = v
    df.to_csv(sheet, index=False, encoding="utf-8-sig")


# --- issue 24: work lost ---------------------------------------------------------------------------------------

def test_issue_24_synth_sheet_never_replaces_decisions_not_yet_imported(tmp_path):
    run = queue_run(tmp_path/"run")
    assert cli("synth", "sheet", run).exit_code == 0
    assert cli("synth", "sheet", run).exit_code == 0  # an untouched sheet is the kit's own: replaced freely
    fill(run/"review.csv", {"c0": {"status": "accept"}, "c1": {"note": "check the label"}})
    before = snapshot(run)
    line = one_error_line(cli("synth", "sheet", run))
    assert "review.csv" in line and "not yet imported" in line and "synth import" in line, line
    assert snapshot(run) == before  # nothing written: sheet, Label Studio files and queue as they were
    # once imported, the queue holds the work and a new sheet may replace the old one
    assert cli("synth", "import", run, run/"review.csv").exit_code == 0
    assert [(r["status"], r["note"]) for r in read_queue(run/"review.jsonl")][:2] == [("accepted", ""),
                                                                                     ("pending", "check the label")]
    assert cli("synth", "sheet", run).exit_code == 0
    # a stale sheet (the notebook reviewed an item since) holds nothing new either
    review_item(run/"review.jsonl", "c2", "rejected")
    assert cli("synth", "sheet", run).exit_code == 0


def test_issue_24_synth_accepted_never_writes_over_the_queue_or_an_existing_file(tmp_path):
    run = queue_run(tmp_path/"run")
    for i in (0, 1): review_item(run/"review.jsonl", f"c{i}", "accepted")
    queue = (run/"review.jsonl").read_bytes()
    for force in ([], ["--force"]):  # the queue itself: never, whatever the flags
        line = one_error_line(cli("synth", "accepted", run, "-o", run/"review.jsonl", *force))
        assert "review.jsonl" in line and "review queue" in line, line
        assert (run/"review.jsonl").read_bytes() == queue
    assert cli("synth", "sheet", run).exit_code == 0  # the queue still reads
    mine = tmp_path/"mine.jsonl"
    mine.write_text('{"text": "my own record", "label": "tech"}\n')
    for force in ([], ["--force"]):  # a file the kit did not write: never
        line = one_error_line(cli("synth", "accepted", run, "-o", mine, *force))
        assert "mine.jsonl" in line and "exists" in line, line
        assert mine.read_text() == '{"text": "my own record", "label": "tech"}\n'
    out = tmp_path/"synthetic.jsonl"
    assert cli("synth", "accepted", run, "-o", out).exit_code == 0 and len(out.read_text().splitlines()) == 2
    review_item(run/"review.jsonl", "c2", "accepted")
    line = one_error_line(cli("synth", "accepted", run, "-o", out))  # its own earlier output: only when told
    assert "synthetic.jsonl" in line and "--force" in line, line
    assert len(out.read_text().splitlines()) == 2
    r = cli("synth", "accepted", run, "-o", out, "--force")
    assert r.exit_code == 0 and "wrote 3 records" in r.output and len(out.read_text().splitlines()) == 3


def test_issue_24_a_damaged_queue_is_one_line_not_a_key_error(tmp_path):
    run = tmp_path/"run"; run.mkdir()
    (run/"review.jsonl").write_text('{"text": "a plain record", "label": "sport", "meta": {"synthetic": true}}\n')
    line = one_error_line(cli("synth", "sheet", run))
    assert "review.jsonl:1" in line and "not a review queue row" in line, line


# --- issue 24: silent wrong results ----------------------------------------------------------------------------

def _eval_review(folder:Path, n:int=4):
    recs = [json.loads(l) for l in (CLS/"test.jsonl").read_text().splitlines()][:n]
    sheet, key = make_review_sheet(recs, [f"base {i}" for i in range(n)], [f"tuned {i}" for i in range(n)], n, 0)
    write_review(sheet, key, folder)
    return sheet, key

def test_issue_24_review_import_counts_a_duplicated_row_once(tmp_path):
    from finetune_kit.evaluate import EvalError, import_review
    sheet, key = _eval_review(tmp_path)
    sheet["verdict"] = ["1", "2", "tie", "1"]
    sheet.to_csv(tmp_path/"filled.csv", index=False)
    once = import_review(tmp_path/"filled.csv", out=tmp_path/"once.json")
    pd.concat([sheet, sheet.iloc[[0]]]).to_csv(tmp_path/"dup.csv", index=False)  # a row pasted twice
    twice = import_review(tmp_path/"dup.csv", out=tmp_path/"twice.json")
    pick = lambda r: (r["judged"], r["win"], r["tie"], r["loss"], r["blank"])
    assert once["judged"] == 4 and pick(twice) == pick(once)
    other = sheet.iloc[[0]].assign(verdict="2")  # the same item judged both ways: refused, naming it
    pd.concat([sheet, other]).to_csv(tmp_path/"conflict.csv", index=False)
    with pytest.raises(EvalError, match="conflict.csv"): import_review(tmp_path/"conflict.csv", out=tmp_path/"c.json")
    line = one_error_line(cli("review", "import", tmp_path/"conflict.csv", "--out", tmp_path/"c.json"))
    assert repr(str(sheet["item"][0])) in line and "disagree" in line, line
    assert not (tmp_path/"c.json").exists()


# --- one stack, two uses ---------------------------------------------------------------------------------------

def test_one_review_module_serves_both_uses():
    "Sheets, pages and Label Studio are read and written in finetune_kit/review.py only; the two uses hold none of it."
    import ast
    pkg = ROOT/"finetune_kit"
    for use in (pkg/"data"/"queue.py", pkg/"evaluate"/"review.py"):
        tree = ast.parse(use.read_text())
        imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        stack = [n for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module == "review" and n.level == 2]
        assert not imported & {"csv", "html"} and stack, use  # no CSV or HTML code of its own; the stack imported
        assert '"annotations"' not in use.read_text() and "DictWriter" not in use.read_text(), use


@pytest.mark.slow  # runs the page's script under node
def test_the_queue_page_downloads_a_sheet_synth_import_reads(tmp_path):
    "The queue's page (written by `synth sheet`), its script run under node with a stand-in DOM: the download imports."
    import shutil, subprocess
    if not shutil.which("node"): pytest.skip("node is not installed")
    run = queue_run(tmp_path/"run", n=2)
    r = cli("synth", "sheet", run)
    assert r.exit_code == 0 and "review.html" in r.output, r.output
    page = (run/"review.html").read_text()
    js = page[page.index("<script>") + 8:page.index("</script></body>")]
    stub = """const picked={0:{value:'accepted'}, 1:{value:'rejected'}}; let csv=null;
const vals={c0:'good, "clear"', f0_0:'candidate text number 0, corrected', f0_1:'tech',
            f1_0:'candidate text number 1', f1_1:'sport'};
global.document={querySelector:s=>picked[+s.match(/v(\\d+)/)[1]]||null, getElementById:id=>({value: vals[id] || ''}),
  addEventListener:()=>{}, createElement:()=>({click(){}})};
global.Blob=function(parts){csv=parts.join('')}; global.URL={createObjectURL:()=>'blob:x'};
""" + js + "\ndl(); process.stdout.write(csv);"
    out = subprocess.run(["node", "-e", stub], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    (tmp_path/"download.csv").write_text(out.stdout)
    r = cli("synth", "import", run, tmp_path/"download.csv")
    assert r.exit_code == 0 and "edited 1" in r.output and "rejected 1" in r.output, r.output
    rows = read_queue(run/"review.jsonl")
    assert [(x["status"], x["note"]) for x in rows] == [("edited", 'good, "clear"'), ("rejected", "")]
    assert rows[0]["edited"] == {"text": "candidate text number 0, corrected", "label": "tech"}


def test_label_studio_round_trip_for_both_uses(tmp_path):
    "The same export shape and reader: queue decisions with a correction, and blind verdicts to rates."
    from finetune_kit.data.queue import import_queue_label_studio, label_studio_queue_tasks
    from finetune_kit.evaluate import LABEL_STUDIO_CHOICES, import_review, label_studio_tasks
    run = queue_run(tmp_path/"run", n=2)
    tasks = label_studio_queue_tasks(run/"review.jsonl")
    ann = lambda *res: [{"completed_by": 1, "result": list(res)}]
    choice = lambda name, v: {"from_name": name, "type": "choices", "value": {"choices": [v]}}
    export = [{"id": 1, "data": tasks[0]["data"], "annotations": ann(choice("decision", "accept"),
                                                                       choice("edit_label", "tech"))},
              {"id": 2, "data": tasks[1]["data"], "annotations": ann(choice("decision", "reject"), {
                  "from_name": "note", "type": "textarea", "value": {"text": ["off topic"]}})}]
    assert dict(import_queue_label_studio(run/"review.jsonl", export)) == {"edited": 1, "rejected": 1}
    rows = read_queue(run/"review.jsonl")
    assert (rows[0]["edited"]["label"], rows[1]["note"]) == ("tech", "off topic")
    sheet, key = _eval_review(tmp_path/"eval")
    bl = [{"id": i, "data": t["data"], "annotations": ann(choice("verdict", LABEL_STUDIO_CHOICES["1"]))}
          for i, t in enumerate(label_studio_tasks(sheet))]
    (tmp_path/"export.json").write_text(json.dumps(bl + bl[:1]))  # a task exported twice: one judgment
    r = import_review(tmp_path/"export.json", key=tmp_path/"eval"/"review_key.json", out=tmp_path/"r.json")
    assert r["judged"] == 4 and r["win"] == sum(k["1"] == "tuned" for k in key.values())
