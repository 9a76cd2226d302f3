"Sweeps: sweep files, the local Optuna runner (resume, failures, pruning, budgets), results, W&B registration and agents."
import json, os, signal, sqlite3, subprocess, sys, time
from pathlib import Path
import pytest, yaml
from typer.testing import CliRunner
from helpers import ROOT, BIN, tiny_config
from finetune_kit.config import param_specs
from finetune_kit import sweeps
from finetune_kit.sweeps import runner as sweep_runner
from finetune_kit.sweeps import (SweepError, load_sweep, grid_points, search_space, sweep, open_study, recover_stale,
                                 trials_table, pick_cheapest, write_results, wandb_sweep_config, gpu_ids, worker_env)

EXPERIMENT = ROOT/"nbs/workbooks/experiment.ipynb"
TINY = ROOT/"sweeps/tiny.yaml"

@pytest.fixture
def cli():
    from finetune_kit.cli import app
    return app

def _fake_study(spec, rows):
    "An in-memory study with finished trials `rows` of (params, value or None, state, attrs), as the runner records them."
    import optuna
    from optuna.trial import TrialState, create_trial
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize" if spec.goal == "maximize" else "minimize")
    space = search_space(spec)
    for params, value, state, attrs in rows:
        study.add_trial(create_trial(params=params, distributions={k: space[k] for k in params}, value=value,
                                     state=getattr(TrialState, state.upper()), user_attrs={"outcome": state, **attrs}))
    return study

@pytest.fixture
def trial_env(monkeypatch):
    "Trials on a busy CPU: one thread each (oversubscribed threads make a tiny trial ten times slower)."
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("WANDB_MODE", "disabled")

# --- the experiment workbook -------------------------------------------------------------------

def test_experiment_parameters_cell_holds_every_flat_parameter():
    "papermill sees every run-config parameter in the tagged cell, and the next cell builds the config."
    import papermill as pm
    nb = json.loads(EXPERIMENT.read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert "parameters" in code[0]["metadata"].get("tags", [])
    assert "cfg = config_from_namespace(globals())" in "".join(code[1]["source"])
    seen = pm.inspect_notebook(str(EXPERIMENT))
    assert set(param_specs()) <= set(seen), sorted(set(param_specs()) - set(seen))
    untyped = [k for k in param_specs() if not seen[k]["inferred_type_name"] or seen[k]["inferred_type_name"] == "None"]
    assert not untyped and all(seen[k]["help"] for k in param_specs())

def test_experiment_defaults_are_the_config_defaults():
    "The workbook's literals do not drift from the run config's defaults (None there means settings.ini)."
    import ast, papermill as pm
    seen, specs = pm.inspect_notebook(str(EXPERIMENT)), param_specs()
    drift = {k: (seen[k]["default"], specs[k].default) for k in specs
             if seen[k]["default"] != "None" and ast.literal_eval(seen[k]["default"]) != specs[k].default}
    assert not drift, drift

# --- sweep files ---------------------------------------------------------------------------------

def test_example_sweeps_are_valid():
    big, tiny = load_sweep(ROOT/"sweeps/lora_methods.yaml"), load_sweep(TINY)
    assert len(grid_points(big)) == 18 and big.parameters["peft_method"]["values"] == ["lora", "qlora", "dora"]
    assert big.metric == "eval/tuned/macro_f1" and big.goal == "maximize" and big.early_terminate["type"] == "hyperband"
    assert len(grid_points(tiny)) == 4 and tiny.constants["base_model"] == "tiny-test"
    for s in (big, tiny): assert s.notebook == "nbs/workbooks/experiment.ipynb" and "${args_json_file}" in s.command

@pytest.mark.parametrize("text,msg", [
    ("method: grid\nparameters: {lora_rank: {values: [4]}}\n", "parameters.lora_rank: unknown parameter 'lora_rank' (did you mean 'lora_r'?)"),
    ("method: grid\nparameters: {learning_rate: {values: [1e-4]}}\n", "parameters.learning_rate.values[0]: parameter 'learning_rate' must be float"),
    ("method: random\nparameters: {lora_r: {distribution: uniform, min: 2, max: 8}}\n", "parameters.lora_r: distribution 'uniform' gives floats"),
    ("method: random\nparameters: {lora_r: {distribution: int_uniform, min: 2, max: 8, q: 2}}\n", "parameters.lora_r.q: not a key of distribution 'int_uniform'"),
    ("method: bayes\nparameters: {lora_r: {values: [4]}}\n", "metric: required by bayes"),
    ("method: grdi\nparameters: {lora_r: {values: [4]}}\n", "method: must be grid, random or bayes"),
    ("method: grid\nmetric: {name: eval/loss, goal: lower}\nparameters: {lora_r: {values: [4]}}\n", "metric.goal: must be minimize or maximize"),
    ("method: grid\nparameters: {lora_r: {values: [4]}}\nrun_cap: 0\n", "run_cap: must be a positive integer"),
    ("method: grid\nparameters: {lora_r: {values: [4]}}\ncommand: [finetune-kit, run, x.ipynb, '${args_no_hyphens}']\n", "command: ${args_no_hyphens} passes flags"),
    ("method: grid\nparameters: {lora_r: {values: [4]}}\nmax_hours: 2\n", "max_hours: unknown key"),
])
def test_bad_sweep_files_fail_with_one_line_naming_the_key(tmp_path, text, msg):
    p = tmp_path/"s.yaml"; p.write_text(text)
    with pytest.raises(SweepError) as e: load_sweep(p)
    assert str(e.value).startswith(f"{p}: ") and msg in str(e.value) and "\n" not in str(e.value)

def test_cli_rejects_a_bad_sweep_with_exit_2(cli, tmp_path):
    p = tmp_path/"s.yaml"; p.write_text("method: random\nmetric: {name: eval/loss}\nparameters: {lora_r: {values: [4, 8]}}\n")
    r = CliRunner().invoke(cli, ["sweep", str(p), "--dir", str(tmp_path/"sw")])
    assert r.exit_code == 2 and "never ends by itself: set run_cap" in r.output

def test_gpu_assignment(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    gpus = gpu_ids()
    assert gpus == ["2", "3"] and [worker_env(i, 2, gpus)["CUDA_VISIBLE_DEVICES"] for i in range(2)] == ["2", "3"]
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    from finetune_kit.threads import usable_cores
    assert worker_env(0, 2, [])["OMP_NUM_THREADS"] == str(max(1, usable_cores() // 2))

# --- runner mechanics without notebooks -----------------------------------------------------------

def test_a_dead_runners_trials_are_queued_again(tmp_path):
    spec = load_sweep({"method": "grid", "metric": {"name": "eval/loss"}, "parameters": {"lora_r": {"values": [4, 8]}}}, name="dead")
    study = open_study(spec, sweep_dir=tmp_path)
    t = study.ask(search_space(spec))
    dead_pid = 2**22 + 1  # above Linux's largest pid_max: no process has it
    for k, v in {"host": sweep_runner._host(), "runner_pid": dead_pid, "runner_started": 0.0, "params": {"lora_r": t.params["lora_r"]}}.items():
        t.set_user_attr(k, v)
    assert recover_stale(study, say=lambda *a: None) == [t.number]
    assert study.get_trials(deepcopy=False)[t.number].state.name == "FAIL"
    waiting = study.get_trials(deepcopy=False)[-1]
    assert waiting.state.name == "WAITING" and waiting.system_attrs["fixed_params"] == t.params
    assert trials_table(study, spec).loc[t.number, "state"] == "stale"

def test_hyperband_stops_a_weak_running_trial(tmp_path):
    "The runner feeds new eval_loss rows of a running trial to Hyperband and stops the trial it rejects."
    spec = load_sweep({"method": "random", "metric": {"name": "eval/loss"}, "run_cap": 9,
                       "parameters": {"lora_r": {"values": [4, 8, 16]}}, "early_terminate": {"type": "hyperband", "min_iter": 1, "max_iter": 2}}, name="hb")
    study = open_study(spec, sweep_dir=tmp_path)
    space = search_space(spec)
    for v in (1.0, 0.9):  # two finished trials, each better than the ones before at every evaluation
        t = study.ask(space)
        for step, x in enumerate((v, v - .2), 1): t.report(x, step); assert not t.should_prune()
        study.tell(t, v - .2)
    trial = study.ask(space)
    run_dir = tmp_path/"run"; run_dir.mkdir()
    (run_dir/"metrics.jsonl").write_text('{"step": 2, "loss": 6.0}\n{"step": 2, "eval_loss": 9.0}\n')
    import multiprocessing as mp
    proc = mp.get_context("fork").Process(target=time.sleep, args=(60,)); proc.start()
    job = sweep_runner._Job(trial, proc, run_dir, tmp_path/"log", time.time(), devices=1)
    try:
        for _ in range(50):
            if not sweep_runner._watch(study, spec, job): break
            time.sleep(0.1)
        proc.join(10)
        assert job.pruned and job.reported == 1 and not proc.is_alive()
    finally: proc.kill()

def test_results_rank_by_metric_and_cost_and_pick_the_cheapest(tmp_path):
    spec = load_sweep({"method": "grid", "metric": {"name": "eval/tuned/macro_f1", "goal": "maximize"},
                       "parameters": {"lora_r": {"values": [8, 16, 32]}, "peft_method": {"values": ["lora", "dora"]}}}, name="res")
    rows = [({"lora_r": 8, "peft_method": "lora"}, 0.90, "complete", {"seconds": 100.0, "run_id": "a"}),
            ({"lora_r": 32, "peft_method": "dora"}, 0.93, "complete", {"seconds": 300.0, "run_id": "b"}),
            ({"lora_r": 16, "peft_method": "lora"}, 0.70, "complete", {"seconds": 50.0, "run_id": "c"}),
            ({"lora_r": 16, "peft_method": "dora"}, None, "fail", {"seconds": 20.0, "error": "cell 7 failed: ValueError: boom"})]
    study = _fake_study(spec, rows)
    from finetune_kit.config import save_config
    from finetune_kit.settings import make_config
    for rid, r in (("a", 8), ("b", 32)):
        (tmp_path/"trials"/rid).mkdir(parents=True)
        save_config(make_config({"lora_r": r, "run_id": rid}, settings=False), tmp_path/"trials"/rid/"config.json")
    table = trials_table(study, spec)
    assert list(table["rank"].astype(object)) == [2, 1, 3, pd_na()] and table.loc[2, "cost_rank"] == 1
    assert pick_cheapest(table, spec.metric, spec.goal, within=0.05).name == 0
    assert pick_cheapest(table, spec.metric, spec.goal, within=0.25).name == 2
    res = write_results(study, spec, tmp_path, within=0.05)
    for k in ("csv", "md", "best_config", "cheapest_config", "metric_vs_params", "parallel_coordinates", "best_so_far"):
        assert res.files[k].exists(), k
    best = json.loads(res.files["best_config"].read_text())
    assert best["lora_r"] == 32 and "run_id" not in best and "runs_dir" not in best
    from finetune_kit.jobs import job_params
    assert job_params(params_json=str(res.files["best_config"]))["lora_r"] == 32  # ready for `finetune-kit train --params-json`
    assert "cell 7 failed: ValueError: boom" in res.files["md"].read_text()

def pd_na():
    import pandas as pd
    return pd.NA

def test_trial_cap_and_gpu_hours_budget(tmp_path):
    spec = load_sweep({"method": "random", "metric": {"name": "eval/loss"}, "parameters": {"lora_r": {"values": [4, 8]}}}, name="cap")
    study = _fake_study(spec, [({"lora_r": 4}, 1.0, "complete", {"seconds": 3600.0, "device_hours": 1.0}),
                               ({"lora_r": 8}, None, "fail", {"seconds": 1800.0, "device_hours": 0.5})])
    assert sweep_runner._budget_stop(study, spec, 2, None, None, {}) == "trial cap 2 reached"
    assert sweep_runner._budget_stop(study, spec, 3, None, None, {}) is None
    assert sweep_runner._budget_stop(study, spec, None, None, 2.0, {}) == "GPU-hours budget (2.0) spent"  # 1.5 used + 0.75 typical
    assert sweep_runner._budget_stop(study, spec, None, time.time() + 600, None, {}) == "wall-clock budget spent"
    spec.target = 1.5
    assert "target 1.5 reached" in sweep_runner._budget_stop(study, spec, None, None, None, {})

def test_cli_wandb_registers_the_sweep_and_prints_the_agent_line(cli, monkeypatch):
    import wandb
    sent = {}
    monkeypatch.setattr(wandb, "sweep", lambda sweep, project=None, entity=None, **kw: sent.update(sweep=sweep, project=project, entity=entity) or "abc123")
    monkeypatch.setenv("WANDB_ENTITY", "team")
    r = CliRunner().invoke(cli, ["sweep", str(ROOT/"sweeps/lora_methods.yaml"), "--wandb", "--max-trials", "6"])
    assert r.exit_code == 0, r.output
    assert "wandb agent team/finetune-kit/abc123" in r.output and "CUDA_VISIBLE_DEVICES=$i wandb agent team/finetune-kit/abc123" in r.output
    assert sent["sweep"]["run_cap"] == 6 and sent["sweep"]["command"][-1] == "${args_json_file}"
    assert sent["sweep"]["parameters"]["learning_rate"] == {"values": [3e-4, 1e-3]}

def test_prepare_cached_reuses_the_prepared_data():
    from finetune_kit.settings import make_config
    from finetune_kit.models import load_tokenizer
    from finetune_kit.data import prepare_cached
    cfg = tiny_config(max_records=20, max_chars=200, seed=5)
    tok = load_tokenizer(cfg)
    d = prepare_cached(cfg, tok)
    assert (d/"data.json").exists() and json.loads((d/"cache_key.json").read_text())["seed"] == 5
    t0 = time.time(); assert prepare_cached(cfg, tok) == d and time.time() - t0 < 5
    from finetune_kit.data import data_cache_key
    other = tiny_config(max_records=20, seed=5, max_chars=50)
    assert data_cache_key(other, tok) != data_cache_key(cfg, tok) and data_cache_key(cfg, tok) == data_cache_key(cfg, tok)

# --- end to end on the tiny model -------------------------------------------------------------

def _states(db:Path) -> dict:
    "Trial number -> state in an Optuna SQLite study; empty while the runner has created the file but not its tables yet."
    try:
        with sqlite3.connect(db) as c: return dict(c.execute("select number, state from trials"))
    except sqlite3.OperationalError as e:
        if "no such table" in str(e): return {}
        raise

@pytest.mark.slow  # a runner process and its trials' Jupyter kernels
def test_local_sweep_resumes_after_a_kill_records_a_failing_trial_and_finishes(tmp_path, trial_env):
    """Four trials on the tiny model (two made to fail with a target module the model lacks: lora_r 0, the earlier
    way, is now refused before any trial runs); the runner is killed after the first trial finishes and started
    again: the finished trial is not re-run, the failures are recorded and the rest finish."""
    spec = yaml.safe_load(TINY.read_text())
    spec["name"] = "resume"
    spec["parameters"]["lora_r"] = {"values": [2, 8]}
    spec["parameters"]["target_modules"] = {"values": ["all-linear", "nosuch_proj"]}
    spec["parameters"]["learning_rate"] = {"value": 5.0e-3}
    spec.pop("early_terminate")  # keep the trial states deterministic (pruning has its own test)
    f = tmp_path/"resume.yaml"; f.write_text(yaml.safe_dump(spec))
    sd = tmp_path/"sweep"
    runner = subprocess.Popen([sys.executable, "-m", "finetune_kit.cli", "sweep", str(f), "--dir", str(sd)], cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        deadline = time.time() + 400
        while time.time() < deadline and runner.poll() is None:
            if (sd/"study.db").exists() and "COMPLETE" in _states(sd/"study.db").values(): break
            time.sleep(1)
        assert runner.poll() is None, runner.stdout.read()
        time.sleep(2)  # let the runner start trial 1
        os.killpg(runner.pid, signal.SIGKILL)
        runner.wait()
    finally:
        if runner.poll() is None: os.killpg(runner.pid, signal.SIGKILL)
    with sqlite3.connect(sd/"study.db") as c:
        pids = [json.loads(v) for (v,) in c.execute("select value_json from trial_user_attributes where key = 'pid'")]
    import psutil
    time.sleep(2)
    assert not [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE], "a trial outlived its runner"
    first = next(sd.glob("trials/resume-t000-*"))
    stamp = (first/"summary.json").stat().st_mtime_ns

    res = sweep(f, sweep_dir=sd, parallel=2, poll=0.5, verbose=False)
    t = res.table
    assert t.loc[0, "state"] == "complete" and (first/"summary.json").stat().st_mtime_ns == stamp
    done = t[t["state"] == "complete"]
    assert sorted(done["lora_r"]) == [2, 8] and set(done["target_modules"]) == {"all-linear"}
    assert ((t["lora_r"] == 2) & (t["target_modules"] == "all-linear")).sum() == 1  # finished trial not re-run
    failed = t[t["state"] == "failed"]
    assert sorted(failed["lora_r"]) == [2, 8] and set(failed["target_modules"]) == {"nosuch_proj"}
    assert "target_modules nosuch_proj not in the model" in failed["error"].iloc[0]
    nb = Path(failed["run_id"].map(lambda r: sd/"trials"/r/"notebook.ipynb").iloc[0])
    assert nb.exists() and "train(" in sweeps.failed_cell(nb)
    assert set(t["state"]) <= {"complete", "failed", "stale"}
    data_dirs = set()
    for rid, r in zip(done["run_id"], done["lora_r"]):  # injected parameters reached the notebooks' configs
        cfg = json.loads((sd/"trials"/rid/"config.json").read_text())
        data_dirs.add(cfg["data"]["data_dir"])
        assert (cfg["peft"]["lora_r"], cfg["train"]["learning_rate"], cfg["model"]["base_model"], cfg["run_id"]) == (r, 5e-3, "tiny-test", rid)
        assert done.set_index("run_id").loc[rid, "tokens"] > 0 and done.set_index("run_id").loc[rid, "peak_mb"] > 0
    assert len(data_dirs) == 1  # the trials shared one cached data folder
    assert json.loads((sd/"best_config.json").read_text())["lora_r"] in (2, 8)
    assert (sd/"plots"/"parallel_coordinates.png").exists() and "| trial |" in (sd/"trials.md").read_text()

@pytest.mark.slow  # the agent's command: `finetune-kit run`, a Jupyter kernel
def test_a_wandb_agent_run_reaches_the_notebook_config(tmp_path, trial_env, monkeypatch):
    """Do what `wandb agent` does for one run of a sweep (its environment variables, its YAML and JSON parameter
    files and the command built by wandb's own code), with no server: the values reach the run's config.json."""
    from wandb.sdk.launch.sweeps import utils as sweep_utils
    from wandb.sdk.lib import config_util
    spec = load_sweep(TINY)
    cfg = wandb_sweep_config(spec)
    sampled = {**spec.constants, "lora_r": 4, "learning_rate": 0.005}
    command = {"run_id": "r4nd0m", "args": {k: {"value": v} for k, v in sampled.items()}}
    sweep_id, base = "sw33p", tmp_path/"agent"
    json_file = base/"wandb"/f"sweep-{sweep_id}"/"config-r4nd0m.json"
    param_path = base/"wandb"/f"sweep-{sweep_id}"/"config-r4nd0m.yaml"
    config_util.save_config_file_from_dict(str(param_path), command["args"])
    sweep_vars = sweep_utils.create_sweep_command_args(command)
    json_file.write_text(sweep_vars["args_json"][0])
    sweep_vars["args_json_file"] = [str(json_file)]
    argv = []
    for c in sweep_utils.create_sweep_command(list(cfg["command"])):
        argv += sweep_vars.get(c[2:-1]) or [] if c.startswith("${") and c.endswith("}") else [c]
    assert argv[:3] == ["finetune-kit", "run", "nbs/workbooks/experiment.ipynb"]
    (tmp_path/"settings.ini").write_text(f"[finetune_kit]\nruns_dir = {tmp_path/'runs'}\nreport_to = none\n")
    env = {**os.environ, "WANDB_SWEEP_ID": sweep_id, "WANDB_RUN_ID": "r4nd0m", "WANDB_PROJECT": "finetune-kit", "WANDB_ENTITY": "team",
           "WANDB_SWEEP_PARAM_PATH": str(param_path), "WANDB_DIR": str(base), "WANDB_MODE": "disabled",
           "FINETUNE_KIT_SETTINGS": str(tmp_path/"settings.ini")}
    r = subprocess.run([str(BIN/argv[0]), *argv[1:]], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    (run_dir,) = [p.parent for p in (tmp_path/"runs").glob("*/config.json")]
    c = json.loads((run_dir/"config.json").read_text())
    assert (c["peft"]["lora_r"], c["train"]["learning_rate"], c["train"]["max_steps"], c["model"]["base_model"]) == (4, 0.005, 4, "tiny-test")
    assert json.loads((run_dir/"sweep.json").read_text())["sweep_id"] == sweep_id
    assert (run_dir/"eval"/"metrics.json").exists() and (run_dir/"notebook.ipynb").exists()
