"""Preference tuning (issue 26): the builders (served feedback, filled blind review sheets, an SFT model's mistakes)
with counts that reconcile; preference data through the data stage's quarantine; each objective (DPO, KTO, ORPO,
GRPO) trains the tiny model and resumes after a kill; DPO's reference is the adapter switched off, not a second model."""
import json, random, shutil, signal, subprocess, time
from pathlib import Path
import pytest
import torch
from hypothesis import given, settings, strategies as st
from helpers import BIN, CLS, ROOT, TINY, lines, param_args, tiny_adapter, tiny_config
from finetune_kit.files import write_jsonl
from transformers import TrainerCallback

LABELS = ["business", "entertainment", "politics", "sports", "tech"]  # the packaged BBC set's
Q = lambda t: [{"role": "user", "content": t}]


def metric_rows(run_dir):
    return [json.loads(l) for l in (Path(run_dir)/"metrics.jsonl").read_text().splitlines()]

def losses(run_dir):
    return [(r["step"], r["loss"]) for r in metric_rows(run_dir) if "loss" in r]


# --- builders ----------------------------------------------------------------------------------------------------

_rating = st.one_of(st.sampled_from([-1, -0.5, 0, 0.25, 1, True, False, "good", "bad", "meh", 3, None]),
                    st.floats(-1, 1, allow_nan=False))
_feedback = st.fixed_dictionaries(
    {"prompt": st.sampled_from([Q("Topic: shares rose"), Q("Topic: the striker scored"), Q("Topic: a new phone")]),
     "completion": st.sampled_from(["sport", "business", "tech"]), "rating": _rating},
    optional={"correction": st.sampled_from([None, "", "  ", "sport", "business", "tech"])})

@settings(max_examples=60, deadline=None)
@given(st.lists(st.one_of(_feedback, st.just({"messages": Q("old") + [{"role": "assistant", "content": "x"}],
                                              "rating": 1})), max_size=12))
def test_feedback_sets_reconcile(records):
    "Every feedback record is counted once; each set's size follows from the counts; every row is a valid task record."
    from finetune_kit.data import feedback_sets, validate_record
    sets, c = feedback_sets(records)
    assert c["reconciled"] and c["records"] == len(records)
    assert c["rated_good"] + c["rated_bad"] + c["unrated"] + c["no_served_answer"] == len(records)
    assert c["pairs"] == c["corrected"] - c["correction_same_as_answer"] == len(sets["pairs"])
    for name, task in (("chat", "chat"), ("ratings", "unpaired_preference"), ("pairs", "preference")):
        for r in sets[name]: validate_record(r, task)  # raises Rejected on a record the data stage would quarantine
    assert all(p["chosen"].strip() != p["rejected"].strip() for p in sets["pairs"])

def test_served_feedback_builds_every_set(tmp_path):
    "The server's records (`feedback_record`): nothing is dropped, and the three sets say what each rating said."
    from finetune_kit.deploy.ab import feedback_record
    from finetune_kit.data import write_feedback_sets
    recs = [feedback_record(Q("Topic: shares rose"), "sport", -1, "business", request_id="a"),  # corrected
            feedback_record(Q("Topic: the striker scored"), "sport", 1, request_id="b"),  # good
            feedback_record(Q("Topic: a new phone"), "politics", -1, request_id="c"),  # bad, no correction
            feedback_record(Q("Topic: the vote"), "politics", 0.5, "politics", request_id="d"),  # 'corrected' to itself
            feedback_record(Q("Topic: the film"), "tech", 0, request_id="e")]  # neutral
    write_jsonl(recs, tmp_path/"feedback.jsonl")
    c = write_feedback_sets(tmp_path/"feedback.jsonl", tmp_path/"sets")
    assert (c["records"], c["rated_good"], c["rated_bad"], c["unrated"], c["corrected"], c["correction_same_as_answer"]) \
        == (5, 2, 2, 1, 2, 1) and c["reconciled"]
    pairs, rated, chat = (lines(tmp_path/"sets"/f"{n}.jsonl") for n in ("pairs", "ratings", "chat"))
    assert [(p["chosen"], p["rejected"], p["meta"]["request_id"]) for p in pairs] == [("business", "sport", "a")]
    assert sorted((r["meta"]["request_id"], r["completion"], r["label"]) for r in rated) == \
        [("a", "business", True), ("a", "sport", False), ("b", "sport", True), ("c", "politics", False),
         ("d", "politics", True)]
    assert sorted(r["meta"]["request_id"] for r in chat) == ["a", "b", "d"]
    assert json.loads((tmp_path/"sets"/"feedback.json").read_text())["counts"] == c

def _review(tmp_path, n=12, seed=0):
    "A blind review sheet of `n` items written with its key, and the records it was made from."
    from finetune_kit.evaluate import make_review_sheet, write_review
    recs = [{"id": f"r{i}", "prompt": Q(f"Summarise note {i}"), "reference": f"gold {i}"} for i in range(n)]
    sheet, key = make_review_sheet(recs, [f"base says {i}" for i in range(n)], [f"tuned says {i}" for i in range(n)],
                                   n=None, seed=seed)
    paths = write_review(sheet, key, tmp_path)
    return recs, sheet, key, paths

def test_review_pairs_reconcile(tmp_path):
    "Each reviewed item is a pair (the preferred answer chosen) or a counted tie or blank; systems un-blinded right."
    from finetune_kit.evaluate import review_pairs
    recs, sheet, key, paths = _review(tmp_path)
    rng = random.Random(1)
    sheet["verdict"] = [rng.choice(["1", "2", "tie", ""]) for _ in range(len(sheet))]
    sheet.to_csv(paths["csv"], index=False)
    pairs, c = review_pairs(paths["csv"], records={r["id"]: r for r in recs})
    said = sheet.set_index("item")["verdict"].to_dict()
    assert c["reconciled"] and c["items"] == len(sheet)
    assert (c["pairs"], c["tie"], c["blank"]) == (sum(v in ("1", "2") for v in said.values()),
                                                  sum(v == "tie" for v in said.values()),
                                                  sum(v == "" for v in said.values()))
    for p in pairs:
        item = p["meta"]["item"]; slot = said[item]
        assert p["meta"]["chosen_system"] == key[item][slot]
        assert p["chosen"] == f"{'tuned' if key[item][slot] == 'tuned' else 'base'} says {item[1:]}"
        assert p["prompt"] == Q(f"Summarise note {item[1:]}")  # the evaluated record's own prompt
    assert sum(c["chosen_system"].values()) == c["pairs"]

def test_review_pairs_refuse_a_sheet_of_other_answers(tmp_path):
    from finetune_kit.evaluate import EvalError, review_pairs
    _, sheet, _, paths = _review(tmp_path)
    sheet.assign(verdict="1", output_2=sheet.output_2 + " (edited)").to_csv(paths["csv"], index=False)
    with pytest.raises(EvalError, match="shows other answers than the review key was made for"):
        review_pairs(paths["csv"])

def test_pairs_from_answers_reconcile_on_each_task():
    "Scored tasks: a wrong label, missed entities, a worse summary are mistakes; right and empty answers are counted."
    from finetune_kit.evaluate import pairs_from_answers
    cls = [{"id": str(i), "prompt": Q(t), "reference": g, "label": g} for i, (t, g) in
           enumerate([("Shares fell", "business"), ("A late goal", "sports"), ("New phone", "tech"), ("Vote", "politics")])]
    pairs, c = pairs_from_answers(cls, ["business", "tech", "", "sports"], "classification", LABELS)
    assert (c["pairs"], c["right"], c["empty_answer"], c["reconciled"]) == (2, 1, 1, True)
    assert [(p["chosen"], p["rejected"]) for p in pairs] == [("sports", "tech"), ("politics", "sports")]
    summ = [{"id": "s", "prompt": Q("Summarise: the cat sat on the mat all day"), "reference": "the cat sat all day"}]
    pairs, c = pairs_from_answers(summ, ["a dog ran"], "summarization")
    assert c["pairs"] == 1 and pairs[0]["meta"]["score"] < 1 and c["reconciled"]
    pairs, c = pairs_from_answers(summ, ["the cat sat all day"], "summarization")
    assert (c["pairs"], c["right"]) == (0, 1)

def test_mistake_pairs_come_from_the_training_prompts(tmp_path, one_torch_thread):
    "The SFT model's own answers on its training split: every prompt a pair or counted, the test split never read."
    from finetune_kit.evaluate import mistake_pairs
    adapter = tiny_adapter(tmp_path/"sft", seed=1)
    pairs, c = mistake_pairs(adapter, data=CLS, split="train", max_records=10, progress=False)
    train_ids = {r["id"] for r in lines(CLS/"train.jsonl")}
    assert c["records"] == 10 and c["reconciled"] and c["split"] == "train"
    assert c["pairs"] + c["right"] + c["empty_answer"] + c["no_reference"] == 10
    assert {p["meta"]["record"] for p in pairs} <= train_ids
    gold = {r["id"]: r["reference"] for r in lines(CLS/"train.jsonl")}
    assert all(p["chosen"] == gold[p["meta"]["record"]] != p["rejected"] for p in pairs)


# --- preference data through the data stage ----------------------------------------------------------------------

def _pairs(n=40, seed=0):
    "`n` pairs on BBC articles (cut to 150 characters), round-robin over the topics: the gold topic chosen, another rejected."
    from finetune_kit.data import read_packaged
    rng, by = random.Random(seed), {}
    for r in read_packaged("bbc"):
        if r["data"]: by.setdefault(r["data"]["label"], []).append(r["data"]["text"])
    return [{"prompt": Q("Topic of this article: " + by[LABELS[i % 5]][i // 5][:150]), "chosen": LABELS[i % 5],
             "rejected": LABELS[(i + 1 + rng.randrange(4)) % 5]} for i in range(n)]

def test_bad_preference_records_are_quarantined_with_reasons(tmp_path):
    "Same answers, an empty answer, a bad rating, a prompt over the token budget: quarantined, counted, with reasons."
    from finetune_kit.data import prepare_data
    good = _pairs(12)
    bad = [{"prompt": Q("2 + 2 ="), "chosen": "4", "rejected": " 4"},
           {"prompt": Q("3 + 3 ="), "chosen": "", "rejected": "5"},
           {"prompt": Q("word " * 3000), "chosen": "a", "rejected": "b"}]
    write_jsonl(good + bad, tmp_path/"pairs.jsonl")
    cfg = tiny_config(task="preference", source=str(tmp_path/"pairs.jsonl"), max_length=512, max_records=None)
    info = prepare_data(cfg, tmp_path/"p", tokenizer="tiny-test")
    c = info["counts"]
    assert c["rejected_by_reason"] == {"same_answers": 1, "empty_field": 1, "over_token_budget": 1}
    assert c["read"] == 15 and c["reconciled"]
    why = {r["reason"]: r["detail"] for r in lines(tmp_path/"p"/"rejected.jsonl")}
    assert "budget 512" in why["over_token_budget"] and "same answer" in why["same_answers"]
    rated = [{"prompt": Q(f"q{i}"), "completion": "a", "label": v} for i, v in
             enumerate([True, -0.5, 0, 3, "meh", None, "good", [1]])]  # None: no rating at all
    write_jsonl(rated, tmp_path/"ratings.jsonl")
    info = prepare_data(tiny_config(task="unpaired_preference", source=str(tmp_path/"ratings.jsonl"), max_records=None,
                                    val_size=0, test_size=0), tmp_path/"r")
    assert info["counts"]["rejected_by_reason"] == {"bad_rating": 4, "missing_field": 1} and info["counts"]["kept"] == 3
    assert sorted(r["label"] for r in lines(tmp_path/"r"/"train.jsonl")) == [False, True, True]


def test_ratings_under_the_servers_field_name_prepare(tmp_path):
    "The server's feedback file says `rating`, not `label`: the data stage's field check takes it (no -p label_field)."
    from finetune_kit.data import prepare_data
    write_jsonl([{"prompt": Q(f"q{i}"), "completion": "a", "rating": v} for i, v in enumerate([1, -1, 0.5, 0])],
                tmp_path/"feedback.jsonl")
    info = prepare_data(tiny_config(task="unpaired_preference", source=str(tmp_path/"feedback.jsonl"), max_records=None,
                                    val_size=0, test_size=0), tmp_path/"r")
    assert info["counts"]["kept"] == 3 and info["counts"]["rejected_by_reason"] == {"bad_rating": 1}
    assert sorted(r["label"] for r in lines(tmp_path/"r"/"train.jsonl")) == [False, True, True]


# --- each objective trains and resumes ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def pref_data(tmp_path_factory):
    "Prepared pairs and ratings folders (40 records each) for the tiny model."
    from finetune_kit.data import prepare_data
    tmp = tmp_path_factory.mktemp("pref")
    pairs = _pairs(40)
    write_jsonl(pairs, tmp/"pairs.jsonl")
    write_jsonl([{"prompt": p["prompt"], "completion": p["chosen"] if i % 2 else p["rejected"], "label": bool(i % 2)}
                 for i, p in enumerate(pairs)], tmp/"ratings.jsonl")
    for name, task in (("pairs", "preference"), ("ratings", "unpaired_preference")):
        prepare_data(tiny_config(task=task, source=str(tmp/f"{name}.jsonl"), max_records=None), tmp/name)
    return tmp

def text_reward(prompts, completions, **kw):
    "A reward that tells the tiny model's random answers apart (GRPO learns only from rewards that differ)."
    from finetune_kit.rewards import completion_text
    return [(sum(map(ord, completion_text(c))) % 13) / 13 for c in completions]

OBJECTIVES = {  # objective -> its run parameters on the tiny model, and a figure of its own it must log
    "dpo": ({"data_dir": "pairs", "task": "preference"}, "rewards/margins"),
    "orpo": ({"data_dir": "pairs", "task": "preference"}, "log_odds_ratio"),
    "kto": ({"data_dir": "ratings", "task": "unpaired_preference"}, "rewards/chosen"),
    "grpo": ({"data_dir": str(CLS), "task": "classification", "per_device_train_batch_size": 4, "num_generations": 4,
              "max_completion_length": 6, "reward_funcs": "task,test_preference:text_reward"}, "reward"),
}

def objective_params(obj, data, **kw):
    p, _ = OBJECTIVES[obj]
    p = {**p, "data_dir": str(data/p["data_dir"]) if not Path(p["data_dir"]).is_absolute() else p["data_dir"]}
    return {**p, "objective": obj, "logging_steps": 1, "seed": 3, "learning_rate": 5e-3, **kw}

@pytest.mark.parametrize("obj", list(OBJECTIVES))
def test_objective_trains_and_resumes_where_it_stopped(obj, pref_data, tmp_path, one_torch_thread):
    "A few steps of each objective; cut after checkpoint-4 (as a kill leaves it), resumed, it logs the same losses."
    from finetune_kit.train import train
    res = train(tiny_config(objective_params(obj, pref_data, runs_dir=str(tmp_path), run_id="whole", max_steps=6,
                                             save_steps=2, save_total_limit=3)))
    rows = metric_rows(res.run_dir)
    assert [s for s, _ in losses(res.run_dir)] == list(range(1, 7))
    assert any(OBJECTIVES[obj][1] in r for r in rows), f"{obj} logged none of its own figures"
    assert (res.run_dir/"objective_curve.png").is_file() and (res.run_dir/"adapter/adapter_model.safetensors").is_file()
    assert json.loads((res.run_dir/"config.json").read_text())["train"]["objective"] == obj
    assert res.summary["steps"] == 6
    if obj != "orpo": assert res.summary["tokens_per_s"] > 0  # TRL's ORPO counts no tokens
    from safetensors.torch import load_file
    trained = load_file(str(res.run_dir/"adapter/adapter_model.safetensors"))
    if obj != "grpo" or any(r.get("reward_std", 0) > 0 for r in rows):  # GRPO learns nothing where rewards tie
        assert any(v.abs().sum() > 0 for k, v in trained.items() if "lora_B" in k)  # a new LoRA starts with B = 0
    run = tmp_path/"cut"; shutil.copytree(res.run_dir, run)
    shutil.rmtree(run/"checkpoints/checkpoint-6"); shutil.rmtree(run/"adapter"); (run/"summary.json").unlink()
    train(None, run_dir=run, resume=True)
    got, want = dict(losses(run)), dict(losses(res.run_dir))
    assert sorted(got) == list(range(1, 7))
    assert got[6] == pytest.approx(want[6], abs=1e-5) and got[5] == pytest.approx(want[5], abs=1e-5)
    assert json.loads((run/"summary.json").read_text())["steps"] == 6

@pytest.mark.parametrize("obj", list(OBJECTIVES))
def test_objective_sigkill_then_resume(obj, pref_data, tmp_path, run_cli):
    "The CLI run killed after a checkpoint, resumed with `train --resume`, ends where an uninterrupted run ends."
    p = {**TINY, **objective_params(obj, pref_data, runs_dir=tmp_path, max_steps=16, save_steps=2)}
    if obj == "grpo": p["reward_funcs"] = "task"  # the console script does not import the tests' modules
    r = run_cli("train", *param_args({**p, "run_id": "straight"}))
    assert r.returncode == 0, r.stderr[-3000:]
    proc = subprocess.Popen([str(BIN/"finetune-kit"), "train", *param_args({**p, "run_id": "killed"})], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    ck = tmp_path/"killed/checkpoints"
    deadline = time.time() + 300
    saved = lambda: [int(c.name.split("-")[1]) for c in ck.glob("checkpoint-*")]
    while time.time() < deadline and not any(n >= 4 for n in saved()) and proc.poll() is None: time.sleep(0.02)
    proc.send_signal(signal.SIGKILL); proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert max(saved()) < 16 and not (tmp_path/"killed/adapter").exists()
    r = run_cli("train", "--resume", tmp_path/"killed")
    assert r.returncode == 0, r.stderr[-3000:]
    got, want = dict(losses(tmp_path/"killed")), dict(losses(tmp_path/"straight"))
    assert got[16] == pytest.approx(want[16], abs=1e-5)
    assert json.loads((tmp_path/"killed/summary.json").read_text())["steps"] == 16


# --- DPO's reference ---------------------------------------------------------------------------------------------

def _dpo_trainer(cfg, out):
    from finetune_kit.models import load_model
    from finetune_kit.data import load_splits
    from finetune_kit.train import training_args
    from finetune_kit.trainers import objective_trainer, start_model
    model, tok = load_model(cfg, progress=False)
    model = start_model(model, cfg)
    splits = load_splits(cfg.data.data_dir)
    return objective_trainer(cfg, model, tok, splits, training_args(cfg, out), [], {"task": "preference"})

def _completion_logps(model, batch):
    "Summed log-probabilities of the completion tokens (a plain forward, no TRL)."
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1].float()
    lp = torch.log_softmax(logits, -1).gather(-1, batch["input_ids"][:, 1:, None])[..., 0]
    return (lp * batch["completion_mask"][:, 1:]).sum(1)

def _storage(model) -> tuple[int, int]:
    "Parameter elements held in memory (each storage once) and the elements of the base model's own weights."
    seen, held = set(), 0
    for p in model.parameters():
        if p.untyped_storage().data_ptr() not in seen:
            seen.add(p.untyped_storage().data_ptr()); held += p.numel()
    base = sum(p.numel() for n, p in model.named_parameters() if "lora_" not in n)
    return held, base

@pytest.mark.parametrize("start", ["new", "sft"])
def test_dpo_reference_is_the_model_it_started_from_without_a_second_copy(start, pref_data, tmp_path, one_torch_thread):
    """A new adapter: the reference is the adapter switched off (the base). From an SFT adapter: the SFT adapter as it
    was (a frozen copy of its few weights beside the one base). Never a second model in memory."""
    from finetune_kit.models import load_model
    kw = {"init_adapter": str(tiny_adapter(tmp_path/"sft", seed=2))} if start == "sft" else {}
    cfg = tiny_config(objective_params("dpo", pref_data, max_steps=4, learning_rate=5e-2, dtype="float32",
                                       lora_r=8, **kw))
    tr = _dpo_trainer(cfg, tmp_path/"out")
    m = tr.accelerator.unwrap_model(tr.model)
    assert tr.ref_model is None  # TRL loads no reference model
    assert set(m.peft_config) == ({"default"} if start == "new" else {"default", "ref"})
    held, base = _storage(m)
    adapters = sum(p.numel() for n, p in m.named_parameters() if "lora_" in n)
    assert held == base + adapters  # one copy of the base weights; only adapters beside it
    batch = tr.data_collator([tr.train_dataset[i] for i in range(4)])
    seen = {}
    class Look(TrainerCallback):  # after the last step, before the trainer drops TRL's frozen copy
        def on_train_end(self, args, state, control, **kw):
            seen["ref"] = torch.cat(tr.compute_ref_log_probs(tr.model, batch))
            m.eval()
            with tr.accelerator.autocast(): seen["policy"] = _completion_logps(m, batch)
    tr.add_callback(Look())
    tr.train()
    assert set(m.peft_config) == {"default"}  # adapter/ holds the trained adapter alone
    plain, _ = load_model(cfg, adapter=kw.get("init_adapter"), progress=False)
    with tr.accelerator.autocast():  # the precision the trainer computed in
        want = _completion_logps(plain.eval(), batch)  # the base, or the SFT adapter as it was, loaded on its own
    torch.testing.assert_close(seen["ref"], want, atol=1e-3, rtol=1e-4)
    assert not torch.allclose(seen["policy"], want, atol=1e-2)  # the policy has moved away from it


# --- SFT, then DPO on its mistakes, judged against where it started ----------------------------------------------

# an SFT recipe on the tiny model and the classification fixture that ends with a model that answers, and errs: it
# says `sport` to every article (a shorter or gentler run leaves its greedy answers empty, which make no pair)
SFT = {"data_dir": str(CLS), "num_train_epochs": 6, "learning_rate": 1e-2, "per_device_train_batch_size": 4,
       "dtype": "float32", "lora_r": 8, "logging_steps": 1, "seed": 3}
DPO = {"task": "preference", "objective": "dpo", "max_steps": 3, "learning_rate": 5e-3, "dtype": "float32",
       "lora_r": 8, "logging_steps": 1, "seed": 3}

def _check_judged_against_start(dpo_dir, sft_dir, n:int):
    "`evaluate run`'s record of a DPO run: base, start (the SFT adapter) and tuned on the SFT data's test split."
    m = json.loads((Path(dpo_dir)/"eval"/"metrics.json").read_text())
    assert m["objective"] == "dpo" and m["systems"][:3] == ["base", "start", "tuned"] and m["n"] == n
    assert Path(m["data"]).resolve() == CLS.resolve() and m["split"] == "test"  # the SFT data's test split
    assert Path(m["start_adapter"]).resolve().is_relative_to(Path(sft_dir).resolve())  # its path, beside its metrics
    assert f"started from `{m['start_adapter']}`" in (Path(dpo_dir)/"eval"/"report.md").read_text()
    iv = m["intervals"]["tuned - start"]
    assert iv["low"] <= iv["value"] <= iv["high"]
    assert {"base", "start", "tuned"} <= {k for k in m["intervals"]}
    rows = lines(Path(dpo_dir)/"eval"/"predictions.jsonl")
    assert len(rows) == n and all({"base_output", "start_output", "tuned_output"} <= set(r) for r in rows)
    from finetune_kit.evaluate import mistake_pairs  # the start is the SFT run's own model: its answers on the test
    pairs, c = mistake_pairs(sft_dir, split="test", progress=False)  # split are the start's, wrong and right alike
    wrong = {p["meta"]["record"]: p["rejected"] for p in pairs}
    start = {r["id"]: r["start_output"] for r in rows}
    assert c["reconciled"] and set(wrong) & set(start)  # the start errs on some of the judged articles
    assert all(start[i] == a for i, a in wrong.items() if i in start)
    return m

def test_sft_then_dpo_on_its_mistakes_is_judged_against_its_start(tmp_path, one_torch_thread):
    """The tutorial's path on the tiny model: a real SFT run, pairs from its wrong answers on the training split
    (gold chosen, its answer rejected), the pairs prepared, DPO from the SFT adapter, and `evaluate run` on the DPO
    run: base, start and tuned on the SFT data's test split, the paired interval of tuned - start, the verdict."""
    from typer.testing import CliRunner
    from finetune_kit.cli import app
    from finetune_kit.data import prepare_data
    from finetune_kit.evaluate import mistake_pairs, write_pairs
    from finetune_kit.train import train
    common = {"runs_dir": str(tmp_path), "max_eval_samples": 8, "bootstrap_samples": 50}
    sft = train(tiny_config(common, SFT, run_id="sft"))
    pairs, c = mistake_pairs(sft.run_dir, split="train", max_records=16, progress=False)
    assert c["reconciled"] and c["records"] == 16 and c["pairs"] + c["right"] + c["empty_answer"] == 16
    assert len(pairs) == c["pairs"] > 0
    train_ids = {r["id"] for r in lines(CLS/"train.jsonl")}
    assert all(p["chosen"] != p["rejected"] for p in pairs)
    assert {p["chosen"] for p in pairs} <= {r["label"] for r in lines(CLS/"train.jsonl")}  # gold answers chosen
    assert {p["meta"]["record"] for p in pairs} <= train_ids  # only training prompts, never the test split
    write_pairs(pairs, tmp_path/"pairs.jsonl")
    prepare_data(tiny_config(task="preference", source=str(tmp_path/"pairs.jsonl"), max_records=None, val_size=0,
                             test_size=0), tmp_path/"pairs")
    dpo = train(tiny_config(common, DPO, data_dir=str(tmp_path/"pairs"), init_adapter=str(sft.run_dir),
                            run_id="dpo"))
    assert json.loads((dpo.run_dir/"config.json").read_text())["train"]["init_adapter"] == str(sft.run_dir)
    r = CliRunner().invoke(app, ["evaluate", "run", str(dpo.run_dir), "--no-progress"])
    assert r.exit_code == 0, r.output
    assert "tuned - start" in r.output and "verdict:" in r.output
    _check_judged_against_start(dpo.run_dir, sft.run_dir, 8)

def test_sft_then_dpo_through_the_commands_a_user_types(tmp_path, run_cli):
    """The same path as the console script's commands: `train` (SFT), `data mistakes`, `data prepare -p task
    preference`, `train -p objective dpo -p init_adapter`, `evaluate run`; each says what it did and exits 0."""
    runs = tmp_path/"runs"
    ok = lambda r: r.returncode == 0 or pytest.fail(r.stdout[-2000:] + r.stderr[-3000:])
    ok(run_cli("train", *param_args({**TINY, **SFT, "runs_dir": runs, "run_id": "sft"})))
    r = run_cli("data", "mistakes", runs/"sft", "--out", tmp_path/"pairs.jsonl", "--max-records", 16, "--no-progress")
    ok(r)
    assert "records 16, pairs " in r.stdout and f"wrote {tmp_path/'pairs.jsonl'}" in r.stdout
    n_pairs = len(lines(tmp_path/"pairs.jsonl"))
    assert n_pairs > 0
    r = run_cli("data", "mistakes", runs/"sft", "--out", tmp_path/"pairs.jsonl", "--no-progress")
    assert r.returncode == 2 and len(lines(tmp_path/"pairs.jsonl")) == n_pairs  # never over a file without --force
    r = run_cli("data", "prepare", tmp_path/"pairs.jsonl", "--out", tmp_path/"pairs", "--tokenizer", "tiny-test",
                *param_args({"task": "preference", "val_size": 0, "test_size": 0}))
    ok(r)
    assert f"prepared {tmp_path/'pairs'}: {n_pairs} train" in r.stdout
    ok(run_cli("train", *param_args({**TINY, **DPO, "runs_dir": runs, "run_id": "dpo", "data_dir": tmp_path/"pairs",
                                     "init_adapter": runs/"sft"})))
    assert (runs/"dpo"/"objective_curve.png").is_file()
    r = run_cli("evaluate", "run", runs/"dpo", "--no-progress", *param_args({"max_eval_samples": 8,
                                                                            "bootstrap_samples": 50}))
    ok(r)
    assert "tuned - start" in r.stdout and "verdict:" in r.stdout
    _check_judged_against_start(runs/"dpo", runs/"sft", 8)

def test_a_preference_run_on_open_ended_answers_gets_a_blind_sheet_start_vs_tuned(pref_data, tmp_path, one_torch_thread):
    """Free-form answers have no exact label to count: the verdict adds a blind review sheet of the start adapter's
    answers against the tuned one's, and the filled sheet comes back as a win rate with its interval."""
    import pandas as pd
    from typer.testing import CliRunner
    from finetune_kit.cli import app
    from finetune_kit.data import prepare_data
    from finetune_kit.evaluate import evaluate_objective, win_interval
    from finetune_kit.train import train
    write_jsonl([{"prompt": f"Summarize: the council met on day {i} and voted on budget item {i % 7}.",
                  "completion": f"Budget item {i % 7} voted on day {i}."} for i in range(40)], tmp_path/"notes.jsonl")
    prepare_data(tiny_config(task="prompt_completion", source=str(tmp_path/"notes.jsonl"), max_records=None,
                             test_records=6), tmp_path/"notes")
    common = {"runs_dir": str(tmp_path/"runs"), "bootstrap_samples": 50, "review_samples": 4, "max_new_tokens": 6}
    sft = train(tiny_config(common, data_dir=str(tmp_path/"notes"), max_steps=2, dtype="float32", run_id="sft"))
    dpo = train(tiny_config(common, DPO, data_dir=str(pref_data/"pairs"), init_adapter=str(sft.run_dir), run_id="dpo"))
    m = evaluate_objective(dpo.run_dir, progress=False)
    assert (m["task"], m["n"], m["systems"][:3]) == ("prompt_completion", 6, ["base", "start", "tuned"])
    assert m["files"]["review"], m["files"]
    ev = Path(m["out_dir"])
    key = json.loads((ev/"review_key.json").read_text())
    assert len(key) == 4 and all(sorted((k["1"], k["2"])) == ["start", "tuned"] for k in key.values())  # blind
    sheet = pd.read_csv(ev/"review_sheet.csv", dtype=str, keep_default_na=False)
    assert "start" not in " ".join(sheet.columns) and "tuned" not in " ".join(sheet.columns)
    sheet["verdict"] = ["1", "2", "1", "tie"]
    sheet.to_csv(tmp_path/"filled.csv", index=False)
    r = CliRunner().invoke(app, ["review", "import", str(tmp_path/"filled.csv"), "--key", str(ev/"review_key.json")])
    wins = sum(key[it][v] == "tuned" for it, v in zip(sheet["item"], sheet["verdict"]) if v != "tie")
    lo, hi = win_interval(wins, 4)
    assert r.exit_code == 0 and f"over 4 judgments: win {wins/4:.0%} [{lo:.0%}, {hi:.0%}]" in r.output, r.output
