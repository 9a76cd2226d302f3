"""The user's own test set (`test_source`) and sources mixed by ratio (`source a.jsonl:0.7,b.jsonl:0.3`), issue 23:
the test split is the test file whole and never in training, training copies of test records are removed and counted
(exact and near), labels only the test set has are reported, and a mixture is drawn as asked and reported as got."""
import json, random
from fractions import Fraction
from pathlib import Path

import pytest
from typer.testing import CliRunner

from finetune_kit.cli import app
from finetune_kit.config import ConfigError
from finetune_kit.data import DataError, data_cache_key, mixture_counts, parse_ratios, prepare_data
from finetune_kit.settings import make_config

WORDS = {"business": "shares profit bank market merger investor bond dividend retail tariff".split(),
         "sport": "match goal team season striker keeper derby league coach final".split(),
         "tech": "chip phone software data server browser patent robot laptop network".split(),
         "weather": "storm rain wind flood snow frost gale thunder fog heat".split()}


def report(i:int, label:str) -> dict:
    "A record of about 200 characters of `label`'s words, different for every `i`."
    r = random.Random(i)
    return {"text": f"Report {i}: " + " ".join(r.choice(WORDS[label]) + str(r.randrange(1000)) for _ in range(22)) + ".",
            "label": label}

def corpus(n:int, start:int=0, labels=("business", "sport", "tech")) -> list[dict]:
    return [report(start + i, labels[i % len(labels)]) for i in range(n)]

def typo(rec:dict) -> dict: return {**rec, "text": rec["text"][:30] + "x" + rec["text"][31:]}

def write(path:Path, recs:list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in recs))
    return path

def lines(p) -> list[dict]: return [json.loads(l) for l in Path(p).read_text().splitlines() if l.strip()]

def prep(out, source, **params):
    "prepare_data with no house layers (no recipe), every record kept whole unless `params` say otherwise."
    return prepare_data(make_config({"source": str(source), **params}, settings=False), out)

def inputs(out, split) -> list[str]: return [r["prompt"][-1]["content"] for r in lines(Path(out)/f"{split}.jsonl")]


# --- the user's own test set ------------------------------------------------------------------------------

@pytest.fixture
def own(tmp_path):
    "A training file of 60 records and a test file of 30: 10 exact copies (case), 5 near copies, 15 new, 1 empty."
    train = corpus(60)
    test = ([{**r, "text": r["text"].upper()} for r in train[:10]] + [typo(r) for r in train[10:15]]
            + corpus(15, start=1000) + [{"text": "  ", "label": "sport"}])
    return write(tmp_path/"train.jsonl", train), write(tmp_path/"test.jsonl", test)


def test_the_test_split_is_the_test_source_whole_and_never_trained_on(tmp_path, own):
    train, test = own
    info = prep(tmp_path/"out", train, test_source=str(test), max_records=20, test_size=0.5, val_size=0.2)
    rows = lines(tmp_path/"out"/"test.jsonl")
    assert [r["meta"]["line"] for r in rows] == list(range(1, 31))  # whole, in order: not capped by max_records 20
    assert {r["meta"]["source"] for r in rows} == {str(test)}
    ts = info["test_set"]
    assert (ts["read"], ts["kept"], ts["rejected_by_reason"]) == (31, 30, {"empty_field": 1})
    trained = set(inputs(tmp_path/"out", "train")) | set(inputs(tmp_path/"out", "validation"))
    assert len(trained) == 20 and not trained & set(inputs(tmp_path/"out", "test"))  # test_size carved nothing
    assert {r["meta"]["source"] for s in ("train", "validation") for r in lines(tmp_path/"out"/f"{s}.jsonl")} == {str(train)}
    c = info["counts"]
    assert c["reconciled"] and c["read"] == 91 and c["splits"]["test"] == 30
    assert "## Test set" in (tmp_path/"out"/"card.md").read_text()


def test_training_copies_of_test_records_are_removed_and_counted(tmp_path, own):
    train, test = own
    info = prep(tmp_path/"out", train, test_source=str(test))
    ts = info["test_set"]
    assert ts["decontaminated_by_kind"] == {"exact": 10, "near": 5} and ts["decontaminated"] == 15
    assert info["counts"]["decontaminated"] == info["counts"]["rejected_by_reason"]["in_test_set"] == 15
    removed = [r for r in lines(tmp_path/"out"/"rejected.jsonl") if r["reason"] == "in_test_set"]
    assert [r["line"] for r in removed] == list(range(1, 16)) and all(r["source"] == str(train) for r in removed)
    assert all(f"of test record {test}:" in r["detail"] for r in removed) and len(ts["examples"]) == 5
    kept = {r["meta"]["line"] for s in ("train", "validation") for r in lines(tmp_path/"out"/f"{s}.jsonl")}
    assert kept == set(range(16, 61))
    card = (tmp_path/"out"/"card.md").read_text()
    assert "Training records removed as copies of test records: 15 (exact 10, near 5" in card


def test_a_test_source_overlapping_the_training_source_is_removed_from_training(tmp_path):
    recs = corpus(40)
    train = write(tmp_path/"all.jsonl", recs)
    test = write(tmp_path/"part.jsonl", recs[:10])  # the user's test file was cut from the training file
    info = prep(tmp_path/"out", train, test_source=str(test))
    assert info["test_set"]["decontaminated_by_kind"]["exact"] == 10 and info["counts"]["splits"]["test"] == 10
    assert not set(inputs(tmp_path/"out", "test")) & (set(inputs(tmp_path/"out", "train")) |
                                                       set(inputs(tmp_path/"out", "validation")))
    with pytest.raises(DataError, match=r"every training record \(40\) is a copy of a record of test_source"):
        prep(tmp_path/"same", train, test_source=str(train))
    assert not (tmp_path/"same").exists()


def test_labels_only_in_the_test_set_are_reported(tmp_path):
    train = write(tmp_path/"train.jsonl", corpus(30))
    test = write(tmp_path/"test.jsonl", corpus(4, start=500, labels=("sport", "weather")))
    r = CliRunner().invoke(app, ["data", "prepare", str(train), "--out", str(tmp_path/"out"), "-p", "test_source",
                                 str(test), "-p", "recipe", "none"])
    assert r.exit_code == 0, r.output
    want = "labels only in the test split, never in training: weather"
    assert f"warning: {want}" in r.output and "test: your own" in r.output
    dj = json.loads((tmp_path/"out"/"data.json").read_text())
    assert dj["only_in_test"] == {"labels": ["weather"]} and want in dj["warnings"]
    assert "Only in the test set, never trained on: labels weather" in (tmp_path/"out"/"card.md").read_text()


def test_entity_types_only_in_the_test_set_are_reported(tmp_path):
    def rec(i, typ):  # a distinct sentence whose second word is an entity of `typ`
        toks = report(i, "tech")["text"].split()
        return {"tokens": toks, "tags": ["O", f"B-{typ}"] + ["O"] * (len(toks) - 2)}
    train = write(tmp_path/"train.jsonl", [rec(i, "person") for i in range(12)])
    test = write(tmp_path/"test.jsonl", [rec(100, "person"), rec(101, "location")])
    info = prep(tmp_path/"out", train, test_source=str(test), task="ner")
    assert info["only_in_test"] == {"entity_types": ["location"]}
    assert info["warnings"] == ["entity types only in the test split, never in training: location"]


def test_a_recipes_test_records_yields_to_test_source_and_an_explicit_one_is_an_error(tmp_path):
    cfg = make_config({"test_source": "mine.jsonl", "recipe": "auto"})  # the task's recipe sets test_records 300
    assert (cfg.recipe, cfg.data.test_records, cfg.data.max_records) == ("cpu-classification", None, 400)
    assert make_config({"test_source": "mine.jsonl", "recipe": "none"}).data.test_records is None
    with pytest.raises(ConfigError, match="parameters test_records and test_source exclude each other"):
        make_config({"test_source": "mine.jsonl", "test_records": 300})
    from finetune_kit.config import DataConfig, RunConfig
    with pytest.raises(DataError, match="test_records 5 and test_source exclude each other"):  # a config made by hand
        prepare_data(RunConfig(data=DataConfig(source=str(write(tmp_path/"t.jsonl", corpus(6))),
                                               test_source=str(tmp_path/"t.jsonl"), test_records=5)), tmp_path/"out")


def test_a_test_source_with_no_usable_record_is_one_line(tmp_path):
    train = write(tmp_path/"train.jsonl", corpus(20))
    bad = write(tmp_path/"bad.jsonl", ["not json", {"text": " ", "label": "a"}])
    with pytest.raises(DataError) as e: prep(tmp_path/"out", train, test_source=str(bad))
    assert str(e.value) == f"test_source {bad} yields no test record (2 read; invalid_json 1, empty_field 1)"
    with pytest.raises(DataError, match="nosuch.jsonl: no such file or folder"):
        prep(tmp_path/"out", train, test_source=str(tmp_path/"nosuch.jsonl"))


def test_the_evaluation_report_names_the_users_test_set(tmp_path, own):
    from finetune_kit.evaluate import evaluate
    train, test = own
    prep(tmp_path/"data", train, test_source=str(test))
    recs = lines(tmp_path/"data"/"test.jsonl")
    cfg = make_config({"report_to": "none", "base_model": "tiny-test", "max_eval_samples": 12}, settings=False)
    res = evaluate(cfg, tmp_path/"data", out_dir=tmp_path/"eval", outputs={"base": ["sport"] * 12}, progress=False)
    line = f"Test set: your own, `{test}`: {len(recs)} records, 12 of them evaluated (max_eval_samples)."
    assert res.metrics["test_set"] == line and line in res.report


def test_the_cache_key_reads_the_test_source_and_the_mixed_files(tmp_path):
    a, b = write(tmp_path/"a.jsonl", corpus(6)), write(tmp_path/"b.jsonl", corpus(6, start=50))
    t = write(tmp_path/"t.jsonl", corpus(3, start=90))
    key = data_cache_key(make_config({"source": f"{a}:0.7,{b}:0.3", "test_source": str(t)}, settings=False))
    assert set(key["files"]) == {str(a), str(b), str(t)}


# --- sources mixed by ratio -------------------------------------------------------------------------------

@pytest.fixture
def two(tmp_path):
    return (write(tmp_path/"a.jsonl", corpus(100)),
            write(tmp_path/"b.jsonl", corpus(100, start=5000, labels=("weather", "sport"))))


def _realised(out) -> dict:
    rows = [r for s in ("train", "validation") for r in lines(Path(out)/f"{s}.jsonl")]
    return {src: sum(r["meta"]["source"] == src for r in rows) / len(rows) for src in {r["meta"]["source"] for r in rows}}


def test_a_mixture_is_drawn_as_asked_and_reported(tmp_path, two):
    a, b = two
    info = prep(tmp_path/"m", f"{a}:0.7,{b}:0.3", max_records=50, val_size=0.2, test_size=0.0)
    mix = info["mixture"]
    assert [(p["source"], p["asked"], p["available"], p["drawn"]) for p in mix["parts"]] == [
        (str(a), 0.7, 100, 35), (str(b), 0.3, 100, 15)]
    got = _realised(tmp_path/"m")
    assert got == {str(a): 0.7, str(b): 0.3} == {p["source"]: p["got"] for p in mix["parts"]}
    assert info["counts"]["skipped"] == 150 and info["counts"]["reconciled"] and mix["pool"] == 50
    from_a = sorted(r["meta"]["line"] for s in ("train", "validation") for r in lines(tmp_path/"m"/f"{s}.jsonl")
                    if r["meta"]["source"] == str(a))
    assert len(from_a) == 35 and from_a != list(range(1, 36))  # a seeded draw, not the first 35
    assert "## Mixture" in (tmp_path/"m"/"card.md").read_text()
    again = prep(tmp_path/"m2", f"{a}:7,{b}:3", max_records=50, val_size=0.2, test_size=0.0)  # ratios normalised, seeded
    assert again["fingerprint"] == info["fingerprint"]
    other = prep(tmp_path/"m3", f"{a}:7,{b}:3", max_records=50, val_size=0.2, test_size=0.0, seed=7)
    assert other["fingerprint"] != info["fingerprint"]


def test_without_max_records_the_pool_is_the_largest_the_ratios_allow(tmp_path, two):
    a, b = two
    info = prep(tmp_path/"m", f"{a}:0.7,{b}:0.3", val_size=0.1, test_size=0.1)
    drawn = [p["drawn"] for p in info["mixture"]["parts"]]
    assert drawn == [99, 43] and sum(drawn) == int(min(Fraction(100) / Fraction(7, 10), Fraction(100) / Fraction(3, 10)))
    got, pool = _realised(tmp_path/"m"), info["mixture"]["pool"]
    assert abs(got[str(a)] - 0.7) <= 1 / pool + 1e-9 and abs(got[str(b)] - 0.3) <= 1 / pool + 1e-9


def test_plain_commas_still_concatenate(tmp_path, two):
    a, b = two
    info = prep(tmp_path/"c", f"{a},{b}")
    assert info["mixture"] is None and info["counts"]["kept"] == 200 and info["sources"] == [str(a), str(b)]


def test_a_path_with_a_colon_is_a_path(tmp_path, two):
    _, b = two
    odd = tmp_path/"2024-01-01T10:30"; odd.mkdir()
    f = write(odd/"data.jsonl", corpus(10, start=300))
    assert prep(tmp_path/"p", f)["mixture"] is None
    colon2 = write(tmp_path/"notes:2.jsonl", corpus(10, start=400))  # its last colon is followed by no number
    assert prep(tmp_path/"q", colon2)["counts"]["kept"] == 10
    info = prep(tmp_path/"r", f"{f}:0.5,{b}:0.5")
    assert [p["source"] for p in info["mixture"]["parts"]] == [str(f), str(b)]


def test_a_mixture_with_test_source(tmp_path, two):
    a, b = two
    test = write(tmp_path/"test.jsonl", [{**r, "text": r["text"].upper()} for r in lines(a)[:20]] + corpus(10, start=9000))
    info = prep(tmp_path/"mt", f"{a}:0.5,{b}:0.5", test_source=str(test), max_records=60)
    assert [(p["available"], p["drawn"]) for p in info["mixture"]["parts"]] == [(80, 30), (100, 30)]
    assert info["counts"]["splits"]["test"] == 30 and info["test_set"]["decontaminated"] == 20


@pytest.mark.parametrize("spec,msg", [
    ("{a}:abc", "source {a}:abc: the ratio after the last ':' must be a positive number; got 'abc'"),
    (":0.5,{a}:0.5", "source :0.5: no file or set before the ratio"),
    ("{a}:-0.3,{b}:1", "source {a}:-0.3: the ratio must be a positive number; got '-0.3'"),
    ("{a}:0,{b}:1", "source {a}:0: the ratio must be a positive number; got '0'"),
    ("{a}:nan", "the ratio must be a positive number; got 'nan'"),
    ("{a}:0.7,{b}", "source: give every part a ratio, or none ({b} has none)"),
    ("{a}:0.7,{bad}:0.3", "source {bad} (ratio 0.3) yields no record to mix: none of 2 read is left"),
    ("{a}:0.5,{a}:0.5", "source {a} (ratio 0.5) yields no record to mix"),  # the second copy: all duplicates
])
def test_bad_mixture_specs_are_one_line(tmp_path, two, spec, msg):
    a, b = two
    bad = write(tmp_path/"bad.jsonl", ["not json", {"text": "", "label": "x"}])
    names = {"a": a, "b": b, "bad": bad}
    with pytest.raises(DataError) as e: prep(tmp_path/"out", spec.format(**names))
    assert msg.format(**names) in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path/"out").exists()


def test_mixture_counts_round_by_largest_remainder():
    r = parse_ratios(["a:1", "b:1", "c:1"])[1]  # names need not exist: a ratio is a number after the last colon
    assert mixture_counts([10, 10, 10], r, 10) == [4, 3, 3]
    assert sum(mixture_counts([1000, 1000], [Fraction(2, 3), Fraction(1, 3)], 100)) == 100


def test_train_warns_and_evaluate_run_judges_on_the_users_test_set(tmp_path):
    "End to end on the tiny model: `train` prints the test-only label, `evaluate run` scores the test file whole."
    train = write(tmp_path/"train.jsonl", corpus(24))
    test = write(tmp_path/"test.jsonl", corpus(6, start=700, labels=("sport", "weather")))
    p = {"base_model": "tiny-test", "source": str(train), "test_source": str(test), "report_to": "none",
         "runs_dir": str(tmp_path/"runs"), "run_id": "own", "max_steps": 1, "max_chars": 120, "max_new_tokens": 4}
    r = CliRunner().invoke(app, ["train", *[x for k, v in p.items() for x in ("-p", k, str(v))]])
    assert r.exit_code == 0, r.output[-2000:]
    assert "warning: labels only in the test split, never in training: weather" in r.output
    run = tmp_path/"runs"/"own"
    assert json.loads((run/"config.json").read_text())["data"]["test_records"] is None  # the recipe's 300 yielded
    r = CliRunner().invoke(app, ["evaluate", "run", str(run), "--no-progress"])
    assert r.exit_code == 0, r.output[-2000:]
    m = json.loads((run/"eval"/"metrics.json").read_text())
    assert m["n"] == 6 and m["test_set"] == f"Test set: your own, `{test}`: 6 records."
    assert m["test_set"] in (run/"eval"/"report.md").read_text()
