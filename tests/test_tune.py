"""`finetune-kit tune`: the choice rule on constructed trials, the budget (parsing, the refusal, the planner), the
search space of every task, the runner's hard stop, and an end-to-end tune on the tiny model that is killed after
its first trial and resumed by the workbook."""
import json, math, os, re, signal, sqlite3, subprocess, sys, time
from pathlib import Path
import pytest
import pandas as pd
from typer.testing import CliRunner
from conftest import ROOT
from finetune_kit.cli import app
from finetune_kit.config import check_param, flatten, param_specs
from finetune_kit.recipes import find_recipe
from finetune_kit.sweeps.spec import SweepError
from finetune_kit.settings import make_config
from finetune_kit.tasks import TASKS
from finetune_kit.evaluate import score_callback, score_key
from finetune_kit.sweeps import runner as sweep_runner
from finetune_kit.sweeps import (Planner, TuneError, choose_trial, first_point, furthest_trial, load_sweep,
                                 open_study, parse_budget, refuse_short_budget, row_key, search_space, judging_seconds,
                                 trial_order, trial_seconds, tune_space, tune_sweep)

M = "eval/tuned/macro_f1"
runner = CliRunner()


def table(rows):
    "A trials table as `tune_table` gives it: (trial, state, score, tokens, train seconds, seconds, checkpoints, last)."
    return pd.DataFrame(rows, columns=["trial", "state", M, "tokens", "train_seconds", "seconds", "checkpoints",
                                       "last_checkpoint"]).set_index("trial")

# --- the rule, fixed before the search ---------------------------------------------------------------------------

RULE_CASES = {
    # name: (rows, epsilon, the trial the rule must choose)
    "fewest tokens within epsilon": ([(0, "complete", 0.93, 90_000, 300.0, 400.0, 2, .9),
                                      (1, "complete", 0.925, 30_000, 100.0, 200.0, 2, .9),
                                      (2, "complete", 0.90, 10_000, 40.0, 90.0, 2, .9)], 0.01, 1),
    "the edge of epsilon counts": ([(0, "complete", 0.93, 90_000, 300.0, 400.0, 2, .9),
                                    (1, "complete", 0.92, 30_000, 100.0, 200.0, 2, .9)], 0.01, 1),
    "no slack: the best": ([(0, "complete", 0.93, 90_000, 300.0, 400.0, 2, .9),
                            (1, "complete", 0.92, 30_000, 100.0, 200.0, 2, .9)], 0.0, 0),
    "tied scores: fewest tokens": ([(0, "complete", 0.9, 50_000, 100.0, 200.0, 2, .9),
                                    (1, "complete", 0.9, 40_000, 300.0, 500.0, 2, .9)], 0.0, 1),
    "tied tokens: fewest training seconds": ([(0, "complete", 0.9, 40_000, 120.0, 200.0, 2, .9),
                                              (1, "complete", 0.9, 40_000, 100.0, 300.0, 2, .9)], 0.0, 1),
    "tied everything: the earliest": ([(3, "complete", 0.9, 40_000, 100.0, 200.0, 2, .9),
                                       (5, "complete", 0.9, 40_000, 100.0, 200.0, 2, .9)], 0.01, 3),
    "a pruned trial never counts": ([(0, "complete", 0.80, 90_000, 300.0, 400.0, 2, .8),
                                     (1, "pruned", None, 10_000, 30.0, 60.0, 1, 0.99)], 0.01, 0),
    "failed trials have no score": ([(0, "failed", None, None, None, 20.0, 0, None),
                                     (1, "complete", 0.5, 30_000, 100.0, 200.0, 2, .5)], 0.01, 1),
    "an unknown cost is the dearest": ([(0, "complete", 0.9, None, None, 100.0, 2, .9),
                                        (1, "complete", 0.9, 80_000, 300.0, 400.0, 2, .9)], 0.01, 1),
}

@pytest.mark.parametrize("name", RULE_CASES)
def test_the_choice_rule_on_constructed_trials(name):
    rows, eps, want = RULE_CASES[name]
    assert choose_trial(table(rows), M, eps).name == want


def test_no_complete_trial_chooses_none_and_the_furthest_pruned_one_is_trained():
    t = table([(0, "failed", None, None, None, 20.0, 0, None), (1, "pruned", None, 9_000, 30.0, 60.0, 1, 0.7),
               (2, "pruned", None, 18_000, 60.0, 120.0, 2, 0.5), (3, "pruned", None, 18_000, 60.0, 120.0, 2, 0.6)])
    assert choose_trial(t, M) is None
    assert furthest_trial(t).name == 3  # most checkpoints, then the best last score
    failed = table([(0, "failed", None, None, None, 20.0, 0, None), (1, "failed", None, None, None, 25.0, 0, None)])
    assert choose_trial(failed, M) is None and furthest_trial(failed) is None

# --- the budget --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("text,seconds", [("45m", 2700), ("1h", 3600), ("90s", 90), ("1h30m", 5400), ("2.5h", 9000),
                                          (" 10 min ", 600)])
def test_budget_parsing(text, seconds):
    assert parse_budget(text) == seconds

@pytest.mark.parametrize("text,says", [(None, "tune needs a budget"), ("", "tune needs a budget"),
                                       ("45", "with its unit"), ("soon", "with its unit"), ("3 fortnights", "with its unit"),
                                       ("0m", "more than zero"), ("45m!", "with its unit")])
def test_bad_budgets_are_one_line(text, says):
    with pytest.raises(TuneError, match=says): parse_budget(text)

CAL = {"wall_s": 90.0, "train_s": 20.0, "steps": 3, "tokens_per_s": 500.0, "tokens_per_record": 200.0,
       "base_ms": 300.0, "tuned_ms": 100.0, "baseline_ms": 1.0, "baseline_fit_s": 5.0, "eval_records": 8,
       "headline": "macro_f1", "records": {"train": 400, "validation": 150, "test": 300}, "labels": None,
       "fingerprint": "sha256:0", "max_chars": 600, "fixed_s": 60.0}

def test_estimates_grow_with_epochs_and_input_length():
    one = trial_seconds(CAL, make_config({"num_train_epochs": 1.0, "max_chars": 600}, settings=False), 25)
    three = trial_seconds(CAL, make_config({"num_train_epochs": 3.0, "max_chars": 600}, settings=False), 25)
    short = trial_seconds(CAL, make_config({"num_train_epochs": 1.0, "max_chars": 300}, settings=False), 25)
    train_one = 400 * 200 / 500
    assert math.isclose(three - one, 2 * train_one + (math.ceil(150 / 25) - math.ceil(50 / 25)) * 64 * 0.1)
    assert math.isclose(one - short, train_one / 2)
    assert judging_seconds(CAL, make_config({}, settings=False)) == pytest.approx(60 + 300 * 0.401 + 5)

def test_a_budget_too_small_for_one_trial_is_refused_with_the_estimate():
    refuse_short_budget("45m", 2700, 90, 400, 300, 200)  # fits
    with pytest.raises(TuneError) as e: refuse_short_budget("5m", 300, 90, 400, 300, 200)
    msg = str(e.value)
    assert msg.startswith("budget 5m is too small: one trial takes about 6.7 min here, the cheapest point of the search "
                          "5.0 min, and judging the winner on the test set about 3.3 min, after 1.5 min spent measuring it")
    assert msg.endswith("give --budget 10m or more") and "\n" not in msg


def test_the_refusal_comes_before_any_trial(tmp_path, monkeypatch):
    "With the calibration already measured (a rerun), a budget too small for one trial stops at once: exit 2, one line."
    monkeypatch.chdir(ROOT)
    d = tmp_path/"tune"; d.mkdir()
    (d/"tune.json").write_text(json.dumps({"calibration": CAL}))
    r = runner.invoke(app, ["tune", "bbc", "--budget", "3m", "--dir", str(d), "-p", "base_model", "tiny-test"])
    assert r.exit_code == 2 and r.output.startswith("error: budget 3m is too small: one trial takes about"), r.output
    assert r.output.count("\n") == 1
    assert not list((d/"search").glob("trials/*"))  # no trial ran
    spent = json.loads((d/"tune.json").read_text())
    assert spent["key"]["params"]["base_model"] == "tiny-test" and "calibration" in spent


def test_a_tune_folder_refuses_other_settings(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    d = tmp_path/"tune"; d.mkdir()
    (d/"tune.json").write_text(json.dumps({"calibration": CAL}))
    runner.invoke(app, ["tune", "bbc", "--budget", "3m", "--dir", str(d), "-p", "base_model", "tiny-test"])
    r = runner.invoke(app, ["tune", "bbc", "--budget", "3m", "--dir", str(d), "-p", "base_model", "tiny-test",
                            "--epsilon", "0.05"])
    assert r.exit_code == 2 and "holds a tune started with other settings (epsilon)" in r.output, r.output


def _study(rows):
    "An in-memory study holding trials of `rows`: (params, state, user attrs)."
    import optuna
    from optuna.distributions import CategoricalDistribution
    from optuna.trial import TrialState, create_trial
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    s = optuna.create_study(direction="maximize")
    for p, state, attrs in rows:
        s.add_trial(create_trial(params=p, distributions={k: CategoricalDistribution([1.0, 2.0, 3.0]) for k in p},
                                 state=getattr(TrialState, state), value=0.5 if state == "COMPLETE" else None,
                                 user_attrs=attrs))
    return s

def test_the_planner_queues_untried_points_that_fit_and_never_repeats_one():
    order = [{"num_train_epochs": e} for e in (3.0, 1.0, 2.0)]
    secs = lambda p: 100.0 * p["num_train_epochs"]
    s = _study([({"num_train_epochs": 3.0}, "COMPLETE", {"outcome": "complete", "seconds": 300.0})])
    assert Planner(order, secs, time.time() + 1000)(s) is None
    assert s.get_trials()[-1].system_attrs["fixed_params"] == {"num_train_epochs": 1.0}  # 3.0 ran already
    s = _study([({"num_train_epochs": 3.0}, "COMPLETE", {"outcome": "complete", "seconds": 600.0}),  # twice as slow
                ({"num_train_epochs": 1.0}, "FAIL", {"outcome": "failed"})])  # a failed point is not tried again
    assert Planner(order, secs, time.time() + 300)(s).startswith("no untried point fits")  # 2 epochs: 400 s at 2x
    assert Planner(order, secs, time.time() + 500)(s) is None
    assert s.get_trials()[-1].system_attrs["fixed_params"] == {"num_train_epochs": 2.0}
    done = _study([(p, "PRUNED", {"outcome": "pruned"}) for p in order])
    assert Planner(order, secs, time.time() + 10_000)(done) == "every point of the search space has a trial"

def test_the_planner_walks_from_the_best_trial_to_its_neighbours_epochs_first():
    "WNUT-16's case: every one-epoch trial scores 0; the walk reaches three epochs in two steps, not by chance."
    import optuna
    from optuna.distributions import CategoricalDistribution
    from optuna.trial import create_trial
    space = dict(tune_space("ner", {}))
    assert list(space)[:2] == ["num_train_epochs", "learning_rate"]
    first = {k: v[0] for k, v in space.items()} | {"num_train_epochs": 1.0, "learning_rate": 2e-3}
    order = trial_order(space, first, 42)
    secs = lambda p: 60.0 * p["num_train_epochs"]
    s = optuna.create_study(direction="maximize")
    def run(p, value):
        s.add_trial(create_trial(params=p, value=value, user_attrs={"outcome": "complete", "seconds": secs(p)},
                                 distributions={k: CategoricalDistribution(v) for k, v in space.items()}))
    def next_point():
        assert Planner(order, secs, time.time() + 10_000, space)(s) is None
        t = s.get_trials()[-1]
        return t.system_attrs["fixed_params"]
    run(first, 0.0)
    two = next_point()
    assert two == {**first, "num_train_epochs": 2.0}
    s = optuna.create_study(direction="maximize"); run(first, 0.0); run(two, 0.29)  # two epochs scored better
    assert next_point() == {**first, "num_train_epochs": 3.0}
    s = optuna.create_study(direction="maximize"); run(first, 0.0); run(two, 0.0)  # a tie: the earliest is the best
    assert next_point() == {**first, "learning_rate": 1e-3}  # first's next neighbour (epochs 2 is claimed)

def _fake_search(pruned_lr=2e-3):
    "A stand-in for the sweep runner: one trial, pruned by Hyperband after two checkpoints, and nothing else."
    def fake(spec, **kw):
        from optuna.distributions import CategoricalDistribution
        from optuna.trial import TrialState, create_trial
        study = open_study(spec, None, kw["sweep_dir"])
        space = search_space(spec)
        params = {"learning_rate": pruned_lr, "num_train_epochs": 3.0}
        study.add_trial(create_trial(params=params, distributions={k: space[k] for k in params},
                                     state=TrialState.PRUNED, intermediate_values={1: 0.3, 2: 0.5},
                                     user_attrs={"outcome": "pruned", "seconds": 50.0, "run_id": "t0"}))
    return fake

def _tune_args(d, budget):
    return {"source": "bbc", "base_model": "tiny-test", "budget": budget, "label_prompt": "omit", "lora_r": 4,
            "max_chars": 300, "peft_method": "lora"}, d

def test_with_no_complete_trial_the_furthest_is_trained_fully_or_the_budget_says_why(tmp_path, monkeypatch):
    from finetune_kit.config import save_config
    from finetune_kit.sweeps import tuning
    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(tuning, "sweep", _fake_search())
    short = tmp_path/"short"; short.mkdir()
    (short/"tune.json").write_text(json.dumps({"calibration": CAL}))
    params, _ = _tune_args(short, "9m")  # one epoch fits (about 5 + 3 minutes); three epochs do not
    with pytest.raises(TuneError, match="no trial completed within the budget; the furthest, trial 0, needs about"):
        tuning.tune(params, short, say=lambda *a: None, verbose=False)
    d = tmp_path/"long"; d.mkdir()
    (d/"tune.json").write_text(json.dumps({"calibration": CAL}))
    ran = {}
    def fake_job(notebook, job, log, timeout=None):  # the retrain: a run folder as the workbook leaves one
        ran.update(job)
        w = Path(job["runs_dir"])/job["run_id"]; (w/"eval").mkdir(parents=True)
        save_config(make_config({k: v for k, v in job.items() if k not in ("runs_dir", "run_id")}), w/"config.json")
        (w/"eval"/"metrics.json").write_text(json.dumps({"tuned": {"macro_f1": 0.8}, "intervals": {"tuned": {"low": 0.7, "high": 0.9}}}))
        return 123.0
    judged = {"metric": "macro_f1", "n": 300, "tuned": {"value": 0.81, "low": 0.77, "high": 0.85}, "ship": False,
              "base": {"value": 0.1, "low": 0.05, "high": 0.15}, "baseline": {"value": 0.9, "low": 0.87, "high": 0.93},
              "baseline_name": "tfidf", "verdict": "keep the tfidf baseline", "warning": None, "eval_dir": str(d/"test")}
    monkeypatch.setattr(tuning, "run_trial_job", fake_job)
    monkeypatch.setattr(tuning, "judge_on_test", lambda *a, **k: judged)
    params, _ = _tune_args(d, "2h")
    res = tuning.tune(params, d, say=lambda *a: None, verbose=False)
    assert (ran["learning_rate"], ran["num_train_epochs"], ran["score_steps"]) == (2e-3, 3.0, 0) and ran["eval_split"] == "validation"
    state = json.loads((d/"tune.json").read_text())
    assert state["chosen"] == {"trial": 0, "run_dir": str(d/"winner"), "retrained": True, "seconds": 123.0}
    assert res.chosen["eval/tuned/macro_f1"] == 0.8 and res.cost["pruned"] == 1 and res.cost["complete"] == 0
    recipe = find_recipe(str(res.recipe), "classification")
    assert recipe.params["learning_rate"] == 2e-3 and "trained to the end" in recipe.provenance["chosen_by"]
    assert recipe.provenance["test"]["value"] == 0.81 and "source" not in recipe.params
    assert "trained to the end (no trial completed)" in (d/"report.md").read_text()
    n_val = param_specs()["tune_val_records"].default  # the trial chose on these; the recipe reproduces its splits
    assert ran["val_records"] == n_val and recipe.params["val_records"] == n_val and "tune_val_records" not in recipe.params

@pytest.mark.parametrize("given", [{}, {"val_size": 0.2}, {"val_records": 80}, {"tune_val_records": 120}])
def test_every_trial_chooses_on_val_records_unless_the_validation_split_is_given(tmp_path, monkeypatch, given):
    "tune passes its own `tune_val_records` to every trial as `val_records`; a val_size or val_records given wins."
    from finetune_kit.sweeps import tuning
    monkeypatch.chdir(ROOT)
    (tmp_path/"tune.json").write_text(json.dumps({"calibration": CAL}))
    seen, said = {}, []
    def fake(spec, **kw):
        seen.update({k: v["value"] for k, v in spec.raw["parameters"].items() if "value" in v})
        raise KeyboardInterrupt  # the search itself is not under test
    monkeypatch.setattr(tuning, "sweep", fake)
    params, _ = _tune_args(tmp_path, "2h")
    with pytest.raises(KeyboardInterrupt): tuning.tune({**params, **given}, tmp_path, say=said.append, verbose=False)
    n = given.get("tune_val_records", param_specs()["tune_val_records"].default)
    want = {k: given[k] for k in ("val_size", "val_records") if k in given} or {"val_records": n}
    assert {k: seen[k] for k in ("val_size", "val_records") if k in seen} == want and "tune_val_records" not in seen
    assert any(f"judged on {CAL['records']['validation']} validation records" in l for l in said), said


# --- the search space ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("task", [t for t in TASKS if TASKS[t].preference is None])
def test_every_task_has_a_valid_search_space_holding_its_recipe(task):
    space = dict(TASKS[task].tune_space)
    assert space and all(len(v) >= 2 for v in space.values())
    for k, values in space.items():
        for v in values: assert check_param(k, v) == v
    spec = tune_sweep("t", {"task": task}, space, "eval/tuned/f1", 4)  # the sweep file's checks accept it
    assert set(search_space(spec)) == set(space)
    recipe = find_recipe("auto", task)
    if recipe is not None:  # the task's measured recipe is one of the points: the first trial
        first = first_point(space, make_config({"task": task, "recipe": "auto"}))
        assert {k: recipe.params[k] for k in space if k in recipe.params} == {k: first[k] for k in space if k in recipe.params}
        assert trial_order(space, first, 1)[0] == first

def test_given_parameters_leave_the_space():
    assert "learning_rate" not in tune_space("classification", {"learning_rate": 1e-3})
    assert "num_train_epochs" not in tune_space("ner", {"max_steps": 50})
    assert "num_train_epochs" in tune_space("ner", {"max_steps": -1})
    assert not {"lora_r", "learning_rate"} & set(tune_space("classification", {"peft_method": "full"}))
    with pytest.raises(TuneError, match="nothing to search"):
        tune_space("chat", {"peft_method": "lora", "learning_rate": 1e-3, "lora_r": 8, "num_train_epochs": 1.0})

def test_trial_order_visits_every_point_once_from_the_first():
    space = tune_space("classification", {})
    first = first_point(space, make_config({}))
    order = trial_order(space, first, 7)
    assert order[0] == first and len(order) == math.prod(len(v) for v in space.values())
    assert len({json.dumps(p, sort_keys=True) for p in order}) == len(order)
    assert order == trial_order(space, first, 7) != trial_order(space, first, 8)

# --- pruning on the task metric, the runner's hard stop -----------------------------------------------------------

def test_checkpoint_scores_are_what_the_pruner_reads(tmp_path):
    for h in ("macro_f1", "f1", "rougeL", "token_f1"):
        assert row_key(f"eval/tuned/{h}") == score_key(h)
    off = score_callback(make_config({}, settings=False), tmp_path, tmp_path)
    assert (off.every, off.records) == (0, [])

def test_a_tunes_hyperband_stops_a_trial_that_trails_at_its_first_checkpoint(tmp_path):
    "The sweep `tune` writes prunes on the checkpoint scores: after a finished trial, a weaker first checkpoint stops."
    spec = tune_sweep("hb", {"source": "bbc"}, {"learning_rate": (5e-4, 1e-3, 2e-3)}, M, 2)  # one Hyperband bracket
    assert spec.early_terminate == {"type": "hyperband", "eta": 3, "min_iter": 1, "max_iter": 2, "compare": "same_length"}
    study = open_study(spec, None, tmp_path)
    space = search_space(spec)
    first = study.ask(space)
    for step, v in ((1, 0.5), (2, 0.8)): first.report(v, step); assert not first.should_prune()
    study.tell(first, 0.85)
    weak, strong = study.ask(space), study.ask(space)
    weak.report(0.1, 1); strong.report(0.6, 1)
    assert weak.should_prune() and not strong.should_prune()

def test_the_runner_stops_a_running_trial_at_the_budgets_end(tmp_path):
    "`stop_at`: a trial still running is stopped, its checkpoint scores reported, recorded as pruned and not queued again."
    import multiprocessing as mp
    spec = load_sweep({"method": "random", "metric": {"name": M, "goal": "maximize"}, "run_cap": 4,
                       "parameters": {"lora_r": {"values": [4, 8]}},
                       "early_terminate": {"type": "hyperband", "min_iter": 1, "max_iter": 4}}, name="cut")
    study = open_study(spec, sweep_dir=tmp_path)
    trial = study.ask(search_space(spec))
    run_dir = tmp_path/"run"; run_dir.mkdir()
    (run_dir/"metrics.jsonl").write_text('{"step": 5, "eval_tuned_macro_f1": 0.4}\n{"step": 10, "eval_tuned_macro_f1": 0.6}\n')
    proc = mp.get_context("fork").Process(target=time.sleep, args=(60,)); proc.start()
    job = sweep_runner._Job(trial, proc, run_dir, tmp_path/"log", time.time(), devices=1)
    try: sweep_runner._cut(study, spec, job, lambda *a: None, "the budget's end")
    finally: proc.kill()
    t = study.get_trials()[-1]
    assert not proc.is_alive() and t.state.name == "PRUNED" and t.user_attrs["stopped"] == "the budget's end"
    assert t.intermediate_values == {1: 0.4, 2: 0.6}
    assert not [x for x in study.get_trials() if x.state.name == "WAITING"]

# --- end to end on the tiny model ---------------------------------------------------------------------------------

TINY = ["-p", "base_model", "tiny-test", "-p", "max_records", "40", "-p", "test_records", "16", "-p", "val_size", "0.3",
        "-p", "max_new_tokens", "4", "-p", "per_device_train_batch_size", "4", "-p", "num_train_epochs", "1",
        "-p", "max_chars", "300", "-p", "lora_r", "4", "-p", "peft_method", "lora", "-p", "learning_rate", "0.002",
        "-p", "bootstrap_samples", "50", "-p", "report_to", "none"]

def _states(db:Path) -> list:
    try:
        with sqlite3.connect(db) as c: return [s for (s,) in c.execute("select state from trials order by number")]
    except sqlite3.OperationalError: return []

@pytest.mark.slow
def test_tune_on_the_tiny_model_resumes_after_a_kill_and_writes_a_recipe(tmp_path, monkeypatch):
    """The command starts a tune (everything fixed but the label prompt: two points), is killed once its first trial
    is complete, and the workbook, run as a job with the same name, resumes it: no second calibration, the finished
    trial not run again, the winner judged once on the test split and written as a recipe that `-p recipe` takes."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    runs, name = tmp_path/"runs", "tiny-tune"
    where = ["-p", "runs_dir", str(runs), "-p", "run_id", name]
    d = runs/name
    cli = subprocess.Popen([sys.executable, "-m", "finetune_kit.cli", "tune", "bbc", "--budget", "6m", *TINY, *where],
                           cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        deadline = time.time() + 400
        while time.time() < deadline and cli.poll() is None and len(_states(d/"search"/"study.db")) < 2:
            time.sleep(1)  # trial 0 is complete and streamed, trial 1 has started
        assert cli.poll() is None, cli.stdout.read()
        os.killpg(cli.pid, signal.SIGKILL); cli.wait()
    finally:
        if cli.poll() is None: os.killpg(cli.pid, signal.SIGKILL)
    first_out = cli.stdout.read()
    assert "measuring one short trial first" in first_out, first_out
    assert re.search(r"\|\s+trial \|\s+state \|.*\n\|-+\|.*\n\|\s+0 \|\s+complete \|", first_out), first_out  # streamed
    cal_stamp = (d/"calibration"/"summary.json").stat().st_mtime_ns
    (t0,) = (d/"search"/"trials").glob(f"{name}-t000-*")
    t0_stamp = (t0/"summary.json").stat().st_mtime_ns

    from finetune_kit.jobs import job_params, run_job
    params = job_params(list(zip(TINY[1::3], TINY[2::3])) + [("source", "bbc"), ("budget", "6m"), ("runs_dir", str(runs)),
                                                             ("run_id", name)])
    monkeypatch.chdir(ROOT)
    run_job(ROOT/"nbs/workbooks/tune.ipynb", params, stream=False, progress=False)
    assert (d/"notebook.ipynb").exists()
    assert (d/"calibration"/"summary.json").stat().st_mtime_ns == cal_stamp  # measured once
    assert (t0/"summary.json").stat().st_mtime_ns == t0_stamp  # the finished trial was not run again
    state = json.loads((d/"tune.json").read_text())
    assert state["finished"] and state["plan"]["points"] == 2 and state["chosen"]["retrained"] is False
    trials = pd.read_csv(d/"trials.csv", index_col="trial")
    assert set(trials["label_prompt"]) == {"omit", "list"} and (trials["state"] == "complete").sum() >= 1
    assert (trials["checkpoints"] >= 1).all()  # every trial scored the validation sample at its checkpoints
    for rid in trials["run_id"]:  # trials are judged on validation, never on test
        assert json.loads((d/"search"/"trials"/rid/"config.json").read_text())["eval"]["eval_split"] == "validation"
    test = json.loads((d/"test"/"metrics.json").read_text())
    assert (test["split"], test["n"]) == ("test", 16) and "verdict" in test
    cost = state["cost"]
    assert cost["trials"] == len(trials) and cost["minutes"] <= cost["budget_minutes"] + 2
    report = (d/"report.md").read_text()
    assert "**Cost of the search**" in report and "**Verdict:" in report and (d/"frontier.png").stat().st_size > 10_000
    chosen = trials.loc[state["chosen"]["trial"]]
    cfg = make_config({"recipe": str(d/"recipe.yaml")})  # the recipe, reused
    assert (cfg.recipe, cfg.data.label_prompt, cfg.model.base_model) == (str(d/"recipe.yaml"), chosen["label_prompt"], "tiny-test")
    again = subprocess.run([sys.executable, "-m", "finetune_kit.cli", "tune", "bbc", "--budget", "6m", *TINY, *where],
                           cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "is finished" in again.stdout and f"chosen: trial {chosen.name}" in again.stdout

def test_pruning_compares_a_trial_only_with_trials_of_its_own_length():
    "A 3-epoch trial's learning rate is still high where a 2-epoch trial's has decayed: its early score is not judged against it."
    import optuna
    from finetune_kit.sweeps.study import _pruner
    s = optuna.create_study(direction="maximize", pruner=_pruner(load_sweep(
        {"method": "random", "metric": {"name": "m", "goal": "maximize"}, "parameters": {"num_train_epochs": {"values": [2.0, 3.0]}},
         "early_terminate": {"type": "hyperband", "min_iter": 1, "max_iter": 6, "eta": 3, "compare": "same_length"}}).early_terminate))
    def run(epochs, scores):
        s.enqueue_trial({"num_train_epochs": epochs}); t = s.ask(); t.suggest_categorical("num_train_epochs", [2.0, 3.0])
        for step, v in enumerate(scores, 1):
            t.report(v, step)
            if t.should_prune(): s.tell(t, state=optuna.trial.TrialState.PRUNED); return "pruned"
        s.tell(t, scores[-1]); return "complete"
    assert run(2.0, [0.5, 0.6]) == "complete"
    assert run(3.0, [0.0, 0.1, 0.4]) == "complete"   # behind the 2-epoch trial at every step, and not pruned
    assert run(2.0, [0.1, 0.2]) == "pruned"           # behind a trial of its own length: pruned at its first checkpoint
    with pytest.raises(SweepError, match="early_terminate.compare: must be all or same_length"):
        load_sweep({"method": "random", "metric": {"name": "m", "goal": "maximize"}, "parameters": {"lora_r": {"values": [8]}},
                    "early_terminate": {"type": "hyperband", "min_iter": 1, "compare": "some"}})


@pytest.mark.parametrize("task", [t for t in TASKS if TASKS[t].preference is not None])
def test_tune_on_preference_data_is_refused_in_one_line(task):
    "Preference tasks have no search space yet: `tune` says so before any run, naming the task."
    assert not TASKS[task].tune_space
    with pytest.raises(TuneError, match=f"task {task}"): tune_space(task, {})
