"Evaluation: metrics against hand-computed cases, resampling, review round trips, generation with an adapter toggle, the CLI."
import json, math
import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner
from helpers import BIN, CLS, ROOT, tiny_config
from finetune_kit.settings import make_config
from finetune_kit.cli import app
from finetune_kit.engine import generate
from finetune_kit.evaluate import (LABEL_STUDIO_CHOICES, EvalError, win_interval, bootstrap_intervals, classification_metrics,
                                   evaluate, exact_match, generate_pair, import_review,
                                   json_field_metrics, label_studio_tasks, label_studio_verdicts, load_split, make_review_sheet,
                                   ner_metrics, normalize_label, perplexity, qa_metrics, review_rates, rouge_metrics,
                                   score_outputs, ship_verdict, slice_report, slice_values, tags_from_entities, tfidf_baseline,
                                   token_f1, write_review, read_jsonl)

runner = CliRunner()
pytestmark = pytest.mark.usefixtures("one_torch_thread")
EVAL = {"max_new_tokens": 4, "bootstrap_samples": 100, "review_samples": 4, "max_eval_samples": None}

# ---- metrics against hand-computed cases

@pytest.mark.parametrize("answer,want", [("Sport", "sport"), ("  tech. ", "tech"), ("'business'", "business"),
    ("Label: sport", "sport"), ("the answer is tech", "tech"), ("Sport. About football.", "sport"),
    ("sport or tech", None), ("technology", None), ("", None), ("sci-fi", "sci-fi"), ("sci", None)])
def test_normalize_label(answer, want):
    assert normalize_label(answer, ["business", "sport", "tech", "sci-fi"]) == want

def test_classification_metrics_hand_computed():
    m = classification_metrics(list("aabbc"), ["a", "b", "b", "c.", "zzz"], ["a", "b", "c"])
    assert m["accuracy"] == pytest.approx(2/5)
    assert m["macro_f1"] == pytest.approx((2/3 + 1/2 + 0)/3)
    assert m["macro_precision"] == pytest.approx((1 + 1/2 + 0)/3)
    assert (m["micro_precision"], m["micro_recall"]) == (pytest.approx(2/4), pytest.approx(2/5))
    assert m["weighted_f1"] == pytest.approx((2*2/3 + 2*1/2 + 0)/5)
    assert (m["outside_label_count"], m["outside_label_rate"]) == (1, 0.2)

def test_ner_strict_entity_f1_and_unparsable():
    toks = "John Smith flew from Paris".split()
    recs = [{"tokens": toks, "tags": ["B-person", "I-person", "O", "O", "B-location"]}, {"tokens": ["Berlin"], "tags": ["B-location"]}]
    # "Smith" alone is a boundary error: strict mode gives it no credit
    m = ner_metrics(recs, ["person: Smith\nlocation: Paris", "I think Berlin!"])
    assert (m["precision"], m["recall"], m["f1"]) == (pytest.approx(1/2), pytest.approx(1/3), pytest.approx(0.4))
    assert m["unparsable_count"] == 1 and m["per_type"]["location"]["recall"] == pytest.approx(1/2)
    assert tags_from_entities(toks, [("person", "john smith"), ("org", "ACME")]) == (["B-person", "I-person", "O", "O", "O"], 1)

def test_rouge_em_token_f1_hand_computed():
    m = rouge_metrics(["the cat sat down"], ["the cat sat"])
    assert (m["rouge1"], m["rouge2"], m["rougeL"]) == (pytest.approx(6/7), pytest.approx(0.8), pytest.approx(6/7))
    assert token_f1("the cat sat", "a cat sat down") == pytest.approx(0.8)
    assert exact_match("The Eiffel Tower!", "eiffel tower") == 1.0
    assert qa_metrics(["Paris", "1969"], ["paris.", "in 1969"]) == {"n": 2, "exact_match": 0.5, "token_f1": pytest.approx((1 + 2/3)/2)}

def test_json_field_error_rate_counts_unparsable():
    ref = '{"name": "Ada", "age": 36, "city": {"name": "London"}}'
    m = json_field_metrics([ref, ref, ref], ['{"name": "ada", "age": 36, "city": {"name": "London"}}',
                                             'Here: {"name": "Ada", "age": 37}', "no idea"])
    assert m["field_error_rate"] == pytest.approx((0 + 2 + 3)/9)
    assert (m["unparsable_count"], m["per_field_error_rate"]["age"]) == (1, pytest.approx(2/3))

def test_unparsable_outputs_are_counted_not_fatal():
    recs = read_jsonl(CLS/"test.jsonl")[:4]
    s = score_outputs("classification", recs, ["", "\x00\x01", "sport sport tech", recs[3]["label"]], labels=["business", "sport", "tech"])
    assert s.metrics["outside_label_count"] == 3 and [it["readable"] for it in s.items] == [False, False, False, True]
    j = score_outputs("instruction", [{"prompt": [], "reference": '{"a": 1}'}]*2, ["{oops", '{"a": 1}'])
    assert (j.headline, j.value, j.metrics["unparsable_count"]) == ("field_accuracy", 0.5, 1)

def test_no_references_skips_reference_metrics_and_says_so():
    recs = [{"prompt": [{"role": "user", "content": "x"}]}]*3
    s = score_outputs("summarization", recs, ["a", "b", "c"])
    assert s.headline is None and "rougeL" not in s.metrics and "reference metrics skipped" in s.notes[0]
    assert bootstrap_intervals(s) == {} and not ship_verdict({})["ship"]
    part = score_outputs("summarization", [{"prompt": [], "reference": "a b"}, {"prompt": []}], ["a b", "zz"])
    assert part.value == 1.0 and "1 of 2 records have no reference" in part.notes[0]

def test_perplexity_matches_model_loss():
    import torch
    from finetune_kit.testing import load_tiny
    model, tok = load_tiny()
    ids = tok("The team won the match.", return_tensors="pt", add_special_tokens=False)["input_ids"]
    with torch.no_grad(): want = math.exp(model(input_ids=ids, labels=ids).loss.item())
    assert perplexity(model, tok, ["The team won the match."]) == pytest.approx(want, rel=1e-4)
    # a record: only the completion's tokens are scored
    rec = read_jsonl(CLS/"test.jsonl")[0]
    full = tok.apply_chat_template(rec["prompt"] + rec["completion"], tokenize=False)
    pre = tok.apply_chat_template(rec["prompt"], add_generation_prompt=True, tokenize=False)
    fid = tok(full, return_tensors="pt", add_special_tokens=False)["input_ids"]
    n_pre = len(tok(pre, add_special_tokens=False)["input_ids"])
    lab = fid.clone(); lab[:, :n_pre] = -100
    with torch.no_grad(): want = math.exp(model(input_ids=fid, labels=lab).loss.item())
    assert perplexity(model, tok, [rec]) == pytest.approx(want, rel=1e-4)

def test_perplexity_from_a_logits_to_keep_mask_equals_full_logits_batched_with_padding():
    "Only the scored positions' logits are computed (a boolean logits_to_keep mask, or the int fallback); float32 sums match."
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from finetune_kit.testing import tiny_model_path
    from finetune_kit.evaluate.generate import _mask_to_keep, _scored_logits, _scored_positions
    model = AutoModelForCausalLM.from_pretrained(tiny_model_path(), dtype="float32")
    tok = AutoTokenizer.from_pretrained(tiny_model_path())
    recs = read_jsonl(CLS/"test.jsonl")[:7]
    recs[1] = recs[1] | {"completion": [{"role": "assistant", "content": "a much longer answer than a label " * 3}]}
    texts = ["The team won the match.", "Shares fell sharply on Monday after the results were published."]
    def full(items):  # one item at a time, all (1, T, V) logits, fp32 log-softmax
        nll = n = 0
        for it in items:
            if isinstance(it, str): ids, st = tok(it, add_special_tokens=False)["input_ids"], 1
            else:
                ids = tok(tok.apply_chat_template(it["prompt"] + it["completion"], tokenize=False), add_special_tokens=False)["input_ids"]
                st = len(tok(tok.apply_chat_template(it["prompt"], add_generation_prompt=True, tokenize=False), add_special_tokens=False)["input_ids"])
            with torch.no_grad(): lp = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0, :-1].float(), -1)
            nll -= lp[torch.arange(st - 1, len(ids) - 1), torch.tensor(ids[st:])].sum().item(); n += len(ids) - st
        return math.exp(nll/n)
    assert _mask_to_keep(model)
    for items in (recs, texts):
        want = full(items)
        for bs in (1, 3, 8):  # batches of different lengths: right padding
            assert perplexity(model, tok, items, batch_size=bs) == pytest.approx(want, rel=1e-5)
    # the mask's rows are the int fallback's rows, and the mask computes only those
    x = torch.tensor([[5, 6, 7, 8, 9, 10], [5, 6, 7, 0, 0, 0], [11, 12, 13, 14, 0, 0]]); att = (x > 0).long()
    m = _scored_positions([(3, 6), (1, 3), (2, 4)], 6)
    assert m.sum() == 3 + 2 + 2 and model(input_ids=x, attention_mask=att, logits_to_keep=m).logits.shape[:-1] == (7,)
    with torch.no_grad():
        a, b = _scored_logits(model, x, att, m, True), _scored_logits(model, x, att, m, False)
        ref = model(input_ids=x, attention_mask=att).logits[m]
    assert a.shape == (7, model.config.vocab_size) and torch.allclose(a, ref, atol=1e-5) and torch.allclose(b, ref, atol=1e-5)

# ---- resampling, verdict, slices

def _sim(p_base, p_tuned, n=150, seed=0):
    rng = np.random.default_rng(seed)
    y = list(rng.choice(["a", "b", "c"], n))
    noisy = lambda p: [t if rng.random() < p else str(rng.choice(["a", "b", "c", "?"])) for t in y]
    recs = [{"prompt": [], "reference": t, "label": t, "meta": {"g": str(rng.choice(["x", "y"]))}} for t in y]
    return recs, *(score_outputs("classification", recs, noisy(p), labels=["a", "b", "c"]) for p in (p_base, p_tuned))

def test_counts_reproduce_library_metrics_on_any_subset():
    from sklearn.metrics import f1_score
    from seqeval.metrics import f1_score as seq_f1
    from seqeval.scheme import IOB2
    recs, sb, _ = _sim(0.5, 0.5)
    idx = np.random.default_rng(3).choice(len(recs), 60)  # with repeats, as a bootstrap draws
    y = [recs[i]["label"] for i in idx]; p = [sb.items[i]["prediction"] for i in idx]
    assert sb.headline_on(idx) == pytest.approx(f1_score(y, p, labels=["a", "b", "c"], average="macro", zero_division=0), abs=1e-12)
    toks = ["A", "B", "C", "D"]
    nrecs = [{"tokens": toks, "tags": t} for t in (["B-x", "I-x", "O", "B-y"], ["O", "B-y", "O", "O"], ["B-x", "O", "B-x", "O"])]
    outs = ["x: A B\ny: D", "x: B", "x: A\nx: C D"]
    s = score_outputs("ner", nrecs, outs)
    gold = [r["tags"] for r in nrecs]; pred = [tags_from_entities(toks, e)[0] for e in
                                               ([("x", "A B"), ("y", "D")], [("x", "B")], [("x", "A"), ("x", "C D")])]
    assert s.value == pytest.approx(seq_f1(gold, pred, mode="strict", scheme=IOB2))
    assert s.headline_on([0, 0, 2]) == pytest.approx(seq_f1([gold[0], gold[0], gold[2]], [pred[0], pred[0], pred[2]], mode="strict", scheme=IOB2))

def test_bootstrap_is_deterministic_under_a_seed():
    _, sb, st = _sim(0.55, 0.85)
    a = bootstrap_intervals(sb, st, n_resamples=500, seed=7)
    assert a == bootstrap_intervals(sb, st, n_resamples=500, seed=7)
    assert a != bootstrap_intervals(sb, st, n_resamples=500, seed=8)
    d = a["difference"]
    assert d["low"] < d["value"] < d["high"] and d["low"] > 0 and a["base"]["low"] < a["base"]["value"] < a["base"]["high"]
    assert ship_verdict(a, 0.02)["ship"] and not ship_verdict(a, 0.9)["ship"]
    same = bootstrap_intervals(sb, sb, n_resamples=200, seed=7)["difference"]
    assert (same["low"], same["high"]) == (0.0, 0.0) and not ship_verdict({"difference": same}, 0.0)["ship"]

def test_slices_flag_the_widest_gap():
    recs, sb, st = _sim(0.5, 0.9, n=120)
    for r, i in zip(recs, range(120)): r["meta"]["g"] = "hard" if i < 40 else "easy"
    st = score_outputs("classification", recs, [("?" if i < 40 else r["label"]) for i, r in enumerate(recs)], labels=["a", "b", "c"])
    t, flag = slice_report({"base": sb, "tuned": st}, slice_values(recs, "g"))
    assert (flag["system"], flag["worst_group"], t.loc["hard", "flag"]) == ("tuned", "hard", "⚠ worst")
    assert t.loc["hard", "tuned"] == 0.0 and t.loc["easy", "tuned"] == 1.0 and t["n"].sum() == 120
    with pytest.raises(EvalError, match="slice column 'nope'"): slice_values(recs, "nope")

def test_tfidf_baseline_on_the_fixture():
    test, info = load_split(CLS, "test")
    s = score_outputs("classification", test, tfidf_baseline(read_jsonl(CLS/"train.jsonl"), test)[0], info["labels"])
    assert s.value > 0.6 and s.metrics["outside_label_rate"] == 0

# ---- human review round trips

def _review(tmp_path, n=8):
    recs = read_jsonl(CLS/"test.jsonl")
    base = [f"base answer {i}" for i in range(len(recs))]; tuned = [f"tuned answer {i}" for i in range(len(recs))]
    sheet, key = make_review_sheet(recs, base, tuned, n=n, seed=1)
    return sheet, key, write_review(sheet, key, tmp_path)

def test_review_sheet_is_blind_and_round_trips_csv(tmp_path):
    sheet, key, p = _review(tmp_path)
    assert len(sheet) == 8 and {v["1"] for v in key.values()} == {"base", "tuned"}  # both orders occur
    for f in ("csv", "html", "label_studio"): assert '"tuned"' not in p[f].read_text() and "review_key" not in p[f].read_text()
    filled = pd.read_csv(p["csv"], dtype=str, keep_default_na=False)
    tuned_slot = lambda it: next(s for s, who in key[it].items() if who == "tuned")
    base_slot = lambda it: next(s for s, who in key[it].items() if who == "base")
    filled["verdict"] = [tuned_slot(it) for it in filled["item"][:5]] + ["tie", base_slot(filled["item"][6]), ""]
    filled.to_csv(tmp_path/"filled.csv", index=False)
    r = import_review(tmp_path/"filled.csv")
    assert (r["win"], r["tie"], r["loss"], r["blank"], r["judged"]) == (5, 1, 1, 1, 7)
    assert r["win_rate"] == pytest.approx(5/7) and json.loads((tmp_path/"review.json").read_text())["win"] == 5
    html = p["html"].read_text()
    assert html.count('class="item"') == 8 and "Download CSV" in html and "<script>" in html

def test_review_round_trips_label_studio(tmp_path):
    sheet, key, p = _review(tmp_path, n=6)
    tasks = json.loads(p["label_studio"].read_text())
    assert tasks == label_studio_tasks(sheet) and set(tasks[0]["data"]) == {"item", "prompt", "reference", "output_1", "output_2"}
    assert '<Choices name="verdict" toName="prompt"' in p["label_studio_config"].read_text()
    verdicts = ["1", "2", "tie", "1", "2", "1"]
    export = []
    for i, (t, v) in enumerate(zip(tasks, verdicts)):  # Label Studio's JSON export shape
        anns = [{"id": 10+i, "completed_by": 1, "was_cancelled": False, "lead_time": 3.2, "result": [
            {"id": "r1", "from_name": "verdict", "to_name": "prompt", "type": "choices", "origin": "manual",
             "value": {"choices": [LABEL_STUDIO_CHOICES[v]]}},
            {"id": "r2", "from_name": "comment", "to_name": "prompt", "type": "textarea", "value": {"text": ["ok"]}}]}]
        if i == 0: anns.append({"id": 99, "was_cancelled": True, "result": []})  # skipped: ignored
        export.append({"id": i+1, "data": t["data"], "annotations": anns, "predictions": []})
    (tmp_path/"export.json").write_text(json.dumps(export))
    got = label_studio_verdicts(tmp_path/"export.json")
    assert list(got["verdict"]) == verdicts and set(got["comment"]) == {"ok"}
    want = review_rates(pd.DataFrame({"item": sheet["item"], "verdict": verdicts}), key)
    assert import_review(tmp_path/"export.json") == want | {"source": str(tmp_path/"export.json")}
    # Label Studio's Pairwise control (left/right) reads too
    pw = [{"data": export[0]["data"], "annotations": [{"result": [{"type": "pairwise", "value": {"selected": "right"}}]}]}]
    assert list(label_studio_verdicts(pw)["verdict"]) == ["2"]
    flat = [t["data"] | {"id": i, "verdict": LABEL_STUDIO_CHOICES[v], "annotator": 1} for i, (t, v) in enumerate(zip(tasks, verdicts))]
    assert list(label_studio_verdicts(flat)["verdict"]) == verdicts  # JSON-MIN
    with pytest.raises(EvalError, match="not in the review key"): review_rates(pd.DataFrame({"item": ["zz"], "verdict": ["1"]}), key)

# ---- generation on the tiny model, base and tuned from one PeftModel

@pytest.fixture(scope="module")
def tiny_peft():
    import torch
    from peft import LoraConfig, get_peft_model
    from finetune_kit.testing import load_tiny
    model, tok = load_tiny()
    torch.manual_seed(0)
    return get_peft_model(model, LoraConfig(r=8, target_modules="all-linear", init_lora_weights=False)), tok

def test_generation_adapter_toggle_on_one_model(tiny_peft):
    from finetune_kit.testing import load_tiny
    model, tok = tiny_peft
    recs = read_jsonl(CLS/"test.jsonl")[:6]
    base, tuned = generate_pair(model, tok, recs, batch_size=4, max_new_tokens=5, progress=False)
    plain, _ = load_tiny()
    assert base == generate(plain, tok, recs, batch_size=4, max_new_tokens=5, progress=False)  # adapter off == bare base
    assert tuned != base
    assert tuned == [generate(model, tok, [r], batch_size=1, max_new_tokens=5, progress=False)[0] for r in recs]  # left padding is exact
    assert tok.padding_side == "right" and model.base_model.model.model.layers[0].self_attn.q_proj.lora_A["default"] is not None
    with pytest.raises(EvalError, match="needs a PeftModel"): generate_pair(plain, tok, recs)

def _transformers_answers(model, tok, recs, n) -> tuple[list[str], list[list[int]]]:
    "Answers (texts and new token ids) from plain `model.generate`, one prompt at a time, with the kit's greedy settings."
    import torch
    from finetune_kit.engine import greedy_config
    gc, texts, ids = greedy_config(model, tok, n), [], []
    for r in recs:
        x = tok.apply_chat_template(r["prompt"], add_generation_prompt=True, return_tensors="pt", return_dict=True)
        with torch.inference_mode(): o = model.generate(**x, generation_config=gc)[0, x["input_ids"].shape[1]:]
        texts.append(tok.decode(o, skip_special_tokens=True).strip()); ids.append(o.tolist())
    return texts, ids

def _batch_sizes(model):
    "A list that fills with the batch size of every forward call of `model`'s decoder stack (however it is called)."
    sizes = []
    model.get_base_model().model.register_forward_pre_hook(lambda m, a, kw: sizes.append(kw["input_ids"].shape[0]), with_kwargs=True)
    return sizes

def test_finished_rows_leave_the_batch_and_answers_match_transformers():
    "Rows that end early leave the batch; each answer still equals transformers' own; settings the loop does not know go to transformers."
    import torch
    from peft import LoraConfig, get_peft_model
    from finetune_kit.testing import load_tiny
    model, tok = load_tiny()
    torch.manual_seed(0)
    model = get_peft_model(model, LoraConfig(r=8, target_modules="all-linear", init_lora_weights=False))
    recs = read_jsonl(CLS/"test.jsonl")[:6]
    _, ids = _transformers_answers(model, tok, recs, 6)
    firsts = [a[0] for a in ids]
    stop = next(t for t in firsts if firsts.count(t) < len(firsts))  # an ordinary token some answers start with, not all
    model.generation_config.eos_token_id = [tok.eos_token_id, stop]  # ... now ends those answers at once
    want, ids = _transformers_answers(model, tok, recs, 6)
    assert 1 <= sum(len(a) == 1 for a in ids) < len(ids)  # some answers end at their first token, others run on
    sizes = _batch_sizes(model)
    assert generate(model, tok, recs, batch_size=6, max_new_tokens=6, progress=False) == want
    assert sizes[1] == 6 and sizes[1:] == sorted(sizes[1:], reverse=True) and sizes[-1] < 6  # after the prefix call: shrinking
    model.generation_config.repetition_penalty = 1.5  # not plain greedy: transformers' generate runs it, pads and all
    want, sizes[:] = _transformers_answers(model, tok, recs, 6)[0], []
    assert generate(model, tok, recs, batch_size=6, max_new_tokens=6, progress=False) == want
    assert set(sizes[1:]) == {6}

@pytest.mark.slow
def test_cpu_batched_generation_matches_one_at_a_time_on_smollm2():
    "The CPU measures (few-row products on packed weights, growing KV cache, shared prefix) leave SmolLM2's fp32 answers unchanged."
    from finetune_kit.models import load_model  # fp32: bf16 sums depend on the batch's padding, so only fp32 can be exact
    model, tok = load_model(make_config(settings=False, base_model="smollm2-135m-instruct", dtype="float32"), progress=False)
    recs = read_jsonl(CLS/"test.jsonl")[:8]
    batched = generate(model, tok, recs, batch_size=8, max_new_tokens=12, progress=False)
    assert all(batched) and batched == [generate(model, tok, [r], batch_size=1, max_new_tokens=12, progress=False)[0] for r in recs]
    from finetune_kit.packed import packing_info
    assert packing_info(model)["used"] == "packed"  # batches of 2-8 rows decoded on packed weights, single rows on MKL's
    held = [m._kit_packed.w for m in model._kit_packing.layers]
    assert all(w is not None for w in held)  # the packed copies outlive a call, for the next one
    generate(model, tok, recs[:2], batch_size=2, max_new_tokens=2, progress=False)
    assert all(m._kit_packed.w is w for m, w in zip(model._kit_packing.layers, held))  # reused: nothing packed again
    want, ids = _transformers_answers(model, tok, recs, 12)
    assert batched == want and min(map(len, ids)) < 12  # plain transformers agrees; some answers ended early, leaving the batch

# ---- rank classification: every label scored as the whole answer

RANK_LABELS = ["business", "sport", "tech", "tech news", "technology"]  # several tokens each; three share "tech"

@pytest.fixture(scope="module")
def loud_peft():
    "A random LoRA scaled up until the tiny model's choice of label depends on the prompt (the bare model's does not)."
    import torch
    from peft import LoraConfig, get_peft_model
    from finetune_kit.testing import load_tiny
    model, tok = load_tiny()
    torch.manual_seed(0)
    cfg = LoraConfig(r=8, lora_alpha=128, target_modules="all-linear", init_lora_weights=False)
    return get_peft_model(model, cfg), tok

def _direct_scores(model, tok, recs, labels) -> np.ndarray:
    "Summed answer log-probs: one plain forward of prompt + answer per label (no cache, no batching), template tokens."
    import torch
    out = np.zeros((len(recs), len(labels)))
    for i, r in enumerate(recs):
        n = len(tok.apply_chat_template(r["prompt"], add_generation_prompt=True)["input_ids"])
        for j, l in enumerate(labels):
            full = tok.apply_chat_template(r["prompt"] + [{"role": "assistant", "content": l}])["input_ids"]
            end = full.index(tok.eos_token_id, n) + 1  # through the end-of-turn token, not the newline after it
            with torch.inference_mode():  # the last `end` positions: after any virtual tokens
                logits = model(input_ids=torch.tensor([full[:end]])).logits[0, -end:]
            lp = logits.float().log_softmax(-1)
            out[i, j] = sum(lp[t-1, full[t]].item() for t in range(n, end))
    return out

def test_rank_labels_equals_the_direct_argmax_at_any_batch_size(loud_peft):
    from finetune_kit.evaluate.generate import rank_labels
    model, tok = loud_peft
    recs = read_jsonl(CLS/"test.jsonl")
    want = _direct_scores(model, tok, recs, RANK_LABELS)
    model.train()
    for bs in (1, 5, 12):
        got, scores = rank_labels(model, tok, recs, RANK_LABELS, batch_size=bs, progress=False, return_scores=True)
        assert got == [RANK_LABELS[j] for j in want.argmax(1)] and scores.shape == (12, 5)
        assert np.abs(scores - want).max() < 1e-4
    assert len(set(got)) >= 3 and model.training  # the choice depends on the prompt; the model's mode is restored
    msgs = [r["prompt"] for r in recs[:3]]  # message lists work as records do
    assert rank_labels(model, tok, msgs, RANK_LABELS, progress=False) == got[:3]
    assert rank_labels(model, tok, [], RANK_LABELS, progress=False) == []

def test_rank_labels_adapter_toggle(loud_peft):
    from finetune_kit.evaluate.generate import rank_labels
    from finetune_kit.testing import load_tiny
    model, tok = loud_peft
    recs = read_jsonl(CLS/"test.jsonl")[:6]
    rank = lambda m: rank_labels(m, tok, recs, RANK_LABELS, progress=False, return_scores=True)
    tuned, t_scores = rank(model)
    with model.disable_adapter(): base, b_scores = rank(model)
    bare, want = rank(load_tiny()[0])
    assert base == bare and np.abs(b_scores - want).max() < 1e-4  # adapter off == the bare model
    assert tuned != base and np.abs(t_scores - b_scores).min() > 1e-3

def test_rank_answer_tokens_are_the_chat_templates():
    import copy
    from finetune_kit.evaluate.generate import answer_ids, rank_labels
    from finetune_kit.testing import load_tiny
    model, tok = load_tiny()
    rec, eot = read_jsonl(CLS/"test.jsonl")[0], tok.eos_token_id
    ids, ans = answer_ids(tok, [rec], RANK_LABELS, [eot])
    for l, a in zip(RANK_LABELS, ans[0]):
        full = tok.apply_chat_template(rec["prompt"] + [{"role": "assistant", "content": l}])["input_ids"]
        assert ids[0] + a == full[:len(ids[0]) + len(a)] and a[-1] == eot and a.count(eot) == 1
        assert len(full) == len(ids[0]) + len(a) + 1 and tok.decode(full[-1:]) == "\n"  # the newline after: not scored
    assert ans[0][2][:-1] == ans[0][3][:2] == ans[0][4][:2]  # "tech" is the first tokens of the longer labels
    odd = copy.deepcopy(tok)  # a template whose generation prompt is not how it renders the assistant's turn
    odd.chat_template = tok.chat_template.replace("'<|im_start|>assistant\\n'", "'<|im_start|>assistant\\n\\n'")
    with pytest.raises(EvalError, match="renders the prompt differently"):
        rank_labels(model, odd, [rec], RANK_LABELS, progress=False)
    with pytest.raises(EvalError, match="distinct labels"): rank_labels(model, tok, [rec], ["tech", "tech"])

def test_rank_labels_computes_each_prompt_once_and_its_labels_as_a_batch(loud_peft):
    "The shared prefix once; then per batch of records, their prompts once and every label of every record at once."
    from finetune_kit.evaluate.generate import answer_ids, rank_labels
    model, tok = loud_peft
    recs = read_jsonl(CLS/"test.jsonl")
    calls = []
    h = model.get_base_model().model.register_forward_pre_hook(
        lambda m, a, kw: calls.append(tuple(kw["input_ids"].shape)), with_kwargs=True)
    try: rank_labels(model, tok, recs, RANK_LABELS, batch_size=5, progress=False)
    finally: h.remove()
    assert calls[0][0] == 1 and [c[0] for c in calls[1:]] == [5, 25, 5, 25, 2, 10]
    longest = max(map(len, answer_ids(tok, recs[:1], RANK_LABELS, [tok.eos_token_id])[1][0]))
    assert all(c[1] == longest - 1 for c in calls[2::2])  # the answers' own tokens, padded on the right

def test_rank_labels_prompt_tuning_scores_whole_sequences():
    "Virtual tokens come before the prompt: no shared cache, each prompt + answer scored as one sequence."
    import torch
    from peft import PromptTuningConfig, get_peft_model
    from finetune_kit.evaluate.generate import rank_labels
    from finetune_kit.testing import load_tiny
    model, tok = load_tiny()
    torch.manual_seed(0)
    model = get_peft_model(model, PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4))
    recs = read_jsonl(CLS/"test.jsonl")[:4]
    got, scores = rank_labels(model, tok, recs, RANK_LABELS, batch_size=3, progress=False, return_scores=True)
    want = _direct_scores(model, tok, recs, RANK_LABELS)
    assert got == [RANK_LABELS[j] for j in want.argmax(1)] and np.abs(scores - want).max() < 1e-4

def test_rank_labels_on_cuda_matches_the_cpu(loud_peft):
    import torch
    from finetune_kit.evaluate.generate import rank_labels
    if not torch.cuda.is_available(): pytest.skip("no CUDA device")
    model, tok = loud_peft
    recs = read_jsonl(CLS/"test.jsonl")
    want = rank_labels(model, tok, recs, RANK_LABELS, progress=False, return_scores=True)
    try:
        model.to("cuda")
        got = rank_labels(model, tok, recs, RANK_LABELS, batch_size=5, progress=False, return_scores=True)
    finally: model.to("cpu")
    assert got[0] == want[0] and np.abs(got[1] - want[1]).max() < 1e-3

def test_evaluate_decode_both_scores_ranked_answers_beside_generated(loud_peft, tmp_path):
    model, tok = loud_peft
    res = evaluate(tiny_config(EVAL, decode="both"), CLS, out_dir=tmp_path, model=model, tokenizer=tok, progress=False)
    m, labels = res.metrics, ["business", "sport", "tech"]
    assert m["decode"] == "both" and {"base", "base_rank", "tuned", "tuned_rank"} <= set(m["systems"])
    assert m["tuned_rank"]["outside_label_count"] == 0 and m["base_rank"]["outside_label_count"] == 0  # always a label
    from finetune_kit.evaluate.generate import rank_labels
    recs = read_jsonl(CLS/"test.jsonl")
    assert [p["tuned_rank_prediction"] for p in read_jsonl(tmp_path/"predictions.jsonl")] == rank_labels(model, tok, recs, labels,
                                                                                                        progress=False)

def test_evaluate_writes_the_eval_folder(tiny_peft, tmp_path):
    model, tok = tiny_peft
    res = evaluate(tiny_config(EVAL, slice_field="desk"), CLS, out_dir=tmp_path, model=model, tokenizer=tok, progress=False)
    names = {p.name for p in tmp_path.iterdir()}
    assert {"predictions.jsonl", "metrics.json", "report.md", "comparison.png", "confusion_base.png", "confusion_tuned.png",
            "slices.png", "review_sheet.csv", "review_sheet.html", "review_key.json", "label_studio_tasks.json"} <= names
    m = json.loads((tmp_path/"metrics.json").read_text())
    assert m["headline"] == "macro_f1" and set(m["intervals"]) == {"base", "tuned", "baseline", "difference", "vs_baseline"}
    assert m["tuned"]["outside_label_count"] > 0 and m["unreadable_examples"]["tuned"] and "baseline" in m
    assert not m["verdict"]["ship"] and m["slices"]["metric"] == "macro_f1"
    preds = read_jsonl(tmp_path/"predictions.jsonl")
    assert len(preds) == 12 and {"base_output", "tuned_output", "base_prediction", "baseline_prediction", "slice"} <= set(preds[0])
    assert "## Answers that could not be read" in res.report and list(res.table.columns) == ["base", "tuned", "baseline", "tuned - base",
                                                                                    "tuned - baseline"]

def test_evaluate_from_precomputed_outputs_without_references(tmp_path):
    d = tmp_path/"data"; d.mkdir()
    recs = [{k: v for k, v in r.items() if k not in ("reference", "label", "completion")} for r in read_jsonl(CLS/"test.jsonl")]
    (d/"test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    (d/"data.json").write_text(json.dumps({"task": "classification", "labels": ["business", "sport", "tech"]}))
    outs = {"base": ["sport"]*12, "tuned": ["tech", "??"]*6}
    res = evaluate(tiny_config(EVAL), d, out_dir=tmp_path/"eval", outputs=outs, progress=False)
    m = res.metrics
    assert m["headline"] is None and m["intervals"] == {} and "reference metrics skipped" in " ".join(m["notes"])
    assert m["tuned"]["outside_label_count"] == 6 and not m["verdict"]["ship"] and "macro_f1" not in m["base"]

# ---- command line

def test_cli_run_on_a_run_folder_finds_its_data_and_adapter(tmp_path, tiny_peft):
    from finetune_kit.runs import create_run
    model, _ = tiny_peft
    cfg, run_dir = create_run(tiny_config(runs_dir=str(tmp_path), data_dir=str(CLS), max_new_tokens=4, bootstrap_samples=50,
                                          review_samples=3))
    model.save_pretrained(run_dir/"adapter")
    r = runner.invoke(app, ["evaluate", "run", str(run_dir), "-p", "max_eval_samples", "6", "--no-progress"])
    assert r.exit_code == 0, r.output
    assert "verdict: do not ship" in r.output and "base 0.000  tuned 0.000  baseline" in r.output
    m = json.loads((run_dir/"eval/metrics.json").read_text())
    assert (m["n"], m["adapter"], m["data"]) == (6, str(run_dir/"adapter"), str(CLS))
    # the filled sheet comes back through the CLI
    sheet = pd.read_csv(run_dir/"eval/review_sheet.csv", dtype=str, keep_default_na=False)
    sheet["verdict"] = ["1", "2", "tie"]
    sheet.to_csv(tmp_path/"filled.csv", index=False)
    r = runner.invoke(app, ["review", "import", str(tmp_path/"filled.csv"), "--key", str(run_dir/"eval/review_key.json")])
    key = json.loads((run_dir/"eval/review_key.json").read_text())
    wins = sum(key[it][v] == "tuned" for it, v in zip(sheet["item"], sheet["verdict"]) if v != "tie")
    lo, hi = win_interval(wins, 3)  # Wilson's interval of the win rate
    assert r.exit_code == 0 and (f"over 3 judgments: win {wins/3:.0%} [{lo:.0%}, {hi:.0%}]  tie 33%  loss {(2-wins)/3:.0%}"
                                 in r.output), r.output
    assert json.loads((run_dir/"eval/review.json").read_text())["win"] == wins

def test_cli_adapter_that_does_not_fit_is_one_line(tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM
    from finetune_kit.testing import make_tiny_model
    other = make_tiny_model(tmp_path/"other", hidden_size=32)
    get_peft_model(AutoModelForCausalLM.from_pretrained(other), LoraConfig(r=4, target_modules="all-linear")).save_pretrained(tmp_path/"ad")
    r = runner.invoke(app, ["evaluate", "run", str(CLS), "--adapter", str(tmp_path/"ad"), "-p", "base_model", "tiny-test", "-p", "report_to", "none",
                            "--out", str(tmp_path/"eval"), "--no-progress"])
    assert r.exit_code == 2
    errs = [l for l in r.output.splitlines() if l.startswith("error: ")]  # (transformers' loading bars also go to stderr)
    assert len(errs) == 1 and "Traceback" not in r.output, r.output
    assert "adapter does not fit base model tiny-test" in errs[0] and "weights have other shapes, e.g." in errs[0], errs[0]

def test_cli_bad_input_is_one_line(tmp_path):
    for args in (["evaluate", "run", str(tmp_path/"nope")], ["evaluate", "run", str(CLS), "-p", "eval_split", "dev"],
                 ["review", "import", str(tmp_path/"x.csv")]):
        r = runner.invoke(app, args)
        assert r.exit_code == 2 and len(r.output.strip().splitlines()) == 1 and r.output.startswith("error: "), (args, r.output)

@pytest.mark.slow  # runs the page's script with node
def test_review_html_download_gives_an_importable_sheet(tmp_path):
    "Run the page's script under node with a stub DOM: its CSV reads back through import_review."
    import shutil, subprocess
    from finetune_kit.evaluate import review_html
    if not shutil.which("node"): pytest.skip("node is not installed")
    sheet, key, p = _review(tmp_path, n=3)
    first = sheet.loc[0, "item"]
    sheet.loc[0, "item"] = 'we"ird, <id>'  # an id that needs quoting in HTML, JS and CSV
    key = {('we"ird, <id>' if k == first else k): v for k, v in key.items()}
    (tmp_path/"review_key.json").write_text(json.dumps(key))
    h = review_html(sheet)
    js = h[h.index("<script>") + 8:h.index("</script></body>")]
    stub = """const checked={0:{value:'1'},2:{value:'tie'}}; let csv=null;
global.document={querySelector:s=>checked[+s.match(/v(\\d+)/)[1]]||null, getElementById:id=>({value:'ok, "fine"'}),
  addEventListener:()=>{}, createElement:()=>({click(){}})};
global.Blob=function(parts){csv=parts.join('')}; global.URL={createObjectURL:()=>'blob:x'};
""" + js + "\ndl(); process.stdout.write(csv);"
    out = subprocess.run(["node", "-e", stub], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    (tmp_path/"filled.csv").write_text(out.stdout)
    r = import_review(tmp_path/"filled.csv")
    assert (r["judged"], r["tie"], r["blank"]) == (2, 1, 1) and r["win"] + r["loss"] == 1
    assert pd.read_csv(tmp_path/"filled.csv")["comment"][0] == 'ok, "fine"'

@pytest.mark.slow  # papermill starts a Jupyter kernel
def test_evaluate_workbook_runs_as_a_papermill_job(tmp_path):
    "The workbook's parameters reach the run: a base-model evaluation of the fixture set on the tiny model."
    import subprocess
    wb = ROOT/"nbs/workbooks/evaluate.ipynb"
    args = dict(base_model="tiny-test", data_dir=str(CLS), runs_dir=str(tmp_path/"runs"), run_id="wb", report_to="none",
                max_eval_samples=5, max_new_tokens=3, bootstrap_samples=50)
    cmd = [str(BIN/"papermill"), str(wb), str(tmp_path/"out.ipynb"), "--no-progress-bar", "--cwd", str(ROOT/"nbs/workbooks")]
    for k, v in args.items(): cmd += ["-p", k, str(v)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    m = json.loads((tmp_path/"runs/wb/eval/metrics.json").read_text())
    assert (m["n"], m["base_model"], m["adapter"], m["data"]) == (5, "tiny-test", None, str(CLS))
    assert m["verdict"]["reason"] == "base model only: nothing to compare"


# ---- honest verdicts: baselines, the verdict, macro averages

def test_verdict_weighs_the_baseline():
    "Tuned beats base but loses to the baseline: keep the baseline. Tuned beats both: ship. Neither: no."
    recs, sb, st = _sim(0.55, 0.85, n=300)
    _, strong, weak = _sim(0.98, 0.45, n=300)
    keep = ship_verdict(bootstrap_intervals(sb, st, 500, baseline=strong), 0.02, "macro_f1", "tfidf")
    assert (keep["ship"], keep["prefer"]) == (False, "baseline") and "keep the tfidf baseline" in keep["reason"]
    go = ship_verdict(bootstrap_intervals(sb, st, 500, baseline=weak), 0.02, "macro_f1", "tfidf")
    assert (go["ship"], go["prefer"]) == (True, "tuned") and go["vs_baseline"] > 0
    _, same, _ = _sim(0.55, 0.55, n=300)
    none = ship_verdict(bootstrap_intervals(sb, same, 500, baseline=strong), 0.02, "macro_f1", "tfidf")
    assert (none["ship"], none["prefer"]) == (False, "baseline")

def test_macro_averages_over_the_labels_that_occur():
    "40 declared labels, 12 of them in the references or answers: macro-F1 is scikit-learn's default average."
    from sklearn.metrics import f1_score
    rng = np.random.default_rng(0)
    labels = [f"l{i:02d}" for i in range(40)]
    refs = list(rng.choice(labels[:12], 200)); outs = [r if rng.random() < 0.6 else str(rng.choice(labels[:12])) for r in refs]
    s = score_outputs("classification", [{"prompt": [], "label": r, "reference": r} for r in refs], outs, labels)
    assert s.value == pytest.approx(f1_score(refs, outs, average="macro"), abs=1e-12)
    assert s.headline_on(np.arange(200)) == pytest.approx(s.value, abs=1e-12)
    assert len([k for k in s.metrics["per_class"] if k.startswith("l")]) == 40  # every declared label is listed

def test_ner_and_summary_baselines():
    from finetune_kit.evaluate import crf_baseline, lead_baseline, memorisation_baseline
    train = [{"tokens": "Ada met Bob in Paris".split(), "tags": ["B-per", "O", "B-per", "O", "B-loc"]}] * 4
    test = [{"tokens": "Bob left Paris".split(), "tags": ["B-per", "O", "B-loc"]}]
    for fn in (memorisation_baseline, crf_baseline):
        answers, about = fn(train, test)
        s = score_outputs("ner", test, answers)
        assert s.value == 1.0 and about["fit_seconds"] >= 0 and about["ms_per_record"] >= 0, (fn, answers)
    docs = [{"prompt": [{"role": "user", "content": "Summarize the text.\n\nText: One. Two. Three."}], "reference": "One."}]
    assert lead_baseline(docs, docs)[0] == ["One."]

def test_an_unfittable_baseline_is_a_note_and_evaluation_completes(tmp_path):
    d = tmp_path/"one_class"; d.mkdir()
    (d/"train.jsonl").write_text("".join(json.dumps({**r, "label": "sport"}) + "\n" for r in read_jsonl(CLS/"train.jsonl")))
    (d/"test.jsonl").write_text((CLS/"test.jsonl").read_text())
    recs = read_jsonl(CLS/"test.jsonl")
    res = evaluate(tiny_config(EVAL), d, out_dir=tmp_path/"eval", outputs={"base": ["x"] * len(recs), "tuned": [r["label"] for r in recs]},
                   progress=False)
    assert "baseline" not in res.systems and any("baseline tfidf unavailable" in n for n in res.metrics["notes"])
    assert res.metrics["verdict"]["prefer"] == "tuned" and (tmp_path/"eval"/"report.md").is_file()
