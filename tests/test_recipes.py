"Recipes: every entry point resolves the same config for the same recipe and parameters; recipe files are checked."
import json, re, typing
from pathlib import Path
import pytest
from typer.testing import CliRunner
import finetune_kit.data, finetune_kit.evaluate, finetune_kit.train
from finetune_kit.cli import app
from finetune_kit.config import flatten, param_specs
from finetune_kit.jobs import injected
from finetune_kit.recipes import find_recipe, recipes
from finetune_kit.settings import make_config
from finetune_kit.sweeps import load_sweep, trial_params

ROOT = Path(__file__).resolve().parents[1]
WORKBOOKS = ROOT/"nbs/workbooks"
runner = CliRunner()

@pytest.fixture(autouse=True)
def project_settings(monkeypatch):
    "These tests are about the house layers: the project's own settings.ini, not the suite's (tests/fixtures)."
    monkeypatch.setenv("FINETUNE_KIT_SETTINGS", str(ROOT/"settings.ini"))

def workbook_config(name:str, params:dict):
    "The config a workbook's job makes from `params`: its parameters cell, papermill's injected values, its config line."
    nb = json.loads((WORKBOOKS/name).read_text())
    cell = next(c for c in nb["cells"] if "parameters" in c["metadata"].get("tags", []))
    ns = {}
    exec("".join(cell["source"]), ns)
    ns.update(injected(params))
    exec("from finetune_kit.settings import config_from_namespace\ncfg = config_from_namespace(globals())", ns)
    return ns["cfg"]

def captured(monkeypatch, module, name:str, args:list[str]):
    "The config `finetune-kit ARGS` hands to `module.name` (replaced by a recorder)."
    seen = {}
    def record(cfg, *a, **kw):
        seen["cfg"] = cfg
        raise SystemExit(0)
    monkeypatch.setattr(module, name, record)
    r = runner.invoke(app, args)
    assert "cfg" in seen, r.output
    return seen["cfg"]

def same(a, b, skip=("run_id",)) -> dict:
    "The flat parameters where two configs differ (ignoring `skip`)."
    fa, fb = flatten(a), flatten(b)
    return {k: (fa[k], fb[k]) for k in fa if k not in skip and fa[k] != fb[k]}

CASES = [({}, "cpu-classification"),
         ({"task": "ner", "source": "wnut16"}, "cpu-ner"),
         ({"recipe": "cpu-classification", "learning_rate": 5e-4, "max_records": None}, "cpu-classification"),
         ({"recipe": "none", "max_chars": 200}, "none")]

@pytest.mark.parametrize("params,recipe", CASES)
def test_every_entry_point_resolves_the_same_config(monkeypatch, params, recipe):
    want = make_config(params)
    assert want.recipe == recipe
    pairs = [x for k, v in params.items() for x in ("-p", k, "none" if v is None else str(v))]
    got = {
        "train": captured(monkeypatch, finetune_kit.train, "train", ["train", *pairs]),
        "run (finetune workbook)": workbook_config("finetune.ipynb", params),
        "sweep trial (experiment workbook)": workbook_config("experiment.ipynb", trial_params(load_sweep(
            {"method": "grid", "metric": {"name": "eval/loss"},
             "parameters": {"seed": {"value": want.seed}, **{k: {"value": v} for k, v in params.items()}}}), {})),
        "data prepare": captured(monkeypatch, finetune_kit.data, "prepare_data",
                                 ["data", "prepare", want.data.source, "--out", "/tmp/never-written",
                                  *[x for k, v in params.items() if k not in ("source",)
                                    for x in ("-p", k, "none" if v is None else str(v))
                                    if k in finetune_kit.cli.core.stage_params(("data", "seed", "max_length", "recipe"))]]),
        "evaluate run (data folder)": captured(monkeypatch, finetune_kit.evaluate, "evaluate",
                                               ["evaluate", "run", str(ROOT/"tests/fixtures/evaluate/cls"),
                                                *[x for k, v in params.items() if k in ("recipe",)
                                                  for x in ("-p", k, str(v))]]),
    }
    data_names = set(finetune_kit.cli.core.stage_params(("data", "seed", "max_length", "recipe")))
    for where, cfg in got.items():
        if where == "evaluate run (data folder)":  # reads no data or training parameters: its recipe and eval section
            if "task" in params: continue  # the task comes from the data folder there
            assert (cfg.recipe, cfg.eval) == (want.recipe, want.eval), where
        elif where == "data prepare":
            assert {k: v for k, v in same(cfg, want).items() if k in data_names} == {}, where
        else:
            assert same(cfg, want) == {}, where

def test_the_experiment_workbook_names_every_parameter_as_not_set():
    "A sweep trial's workbook restates no default: every parameter is None, with the config's own help."
    nb = json.loads((WORKBOOKS/"experiment.ipynb").read_text())
    cell = "".join(next(c for c in nb["cells"] if "parameters" in c["metadata"].get("tags", []))["source"])
    ns = {}; exec(cell, ns)
    specs = param_specs()
    assert {k: ns[k] for k in specs if ns.get(k, "missing") is not None} == {}
    for k, s in specs.items():
        assert f"{k}: " in cell and f"# {s.help}" in cell, k

@pytest.mark.parametrize("name", ["finetune.ipynb", "evaluate.ipynb", "tune.ipynb"])
def test_workbooks_restate_no_default(name):
    nb = json.loads((WORKBOOKS/name).read_text())
    cell = "".join(next(c for c in nb["cells"] if "parameters" in c["metadata"].get("tags", []))["source"])
    ns = {}; exec(cell, ns)
    assert {k: v for k, v in ns.items() if not k.startswith("__") and v is not None} == {}

def test_shipped_recipes_are_valid_and_name_their_files():
    found = recipes()
    assert {"cpu-classification", "cpu-ner", "cpu-summarization", "gpu-qlora"} <= set(found)
    for n, r in found.items():
        assert r.name == n and r.description and "measured" in r.provenance
        assert r.task is None or find_recipe("auto", r.task) is not None

@pytest.mark.parametrize("args,says", [
    (["train", "-p", "recipe", "cpu-clasification"], "unknown recipe 'cpu-clasification': choose one of"),
    (["train", "-p", "recipe", "cpu-ner"], "recipe cpu-ner is for task ner, not classification"),
    (["train", "-p", "recipe", "missing.yaml"], "recipe missing.yaml: no such file"),
])
def test_bad_recipes_are_one_line(args, says):
    r = runner.invoke(app, args)
    assert r.exit_code == 2 and says in r.output and r.output.count("\n") == 1, r.output

def test_a_recipe_file_with_a_bad_parameter_names_the_file(tmp_path):
    bad = tmp_path/"mine.yaml"
    bad.write_text("name: mine\ntask: classification\nparams:\n  learnig_rate: 1.0e-3\n")
    r = runner.invoke(app, ["train", "-p", "recipe", str(bad)])
    assert r.exit_code == 2 and f"{bad} parameter 'learnig_rate' (did you mean 'learning_rate'?)" in r.output
    bad.write_text("name: mine\nparams:\n  lora_r: -3\n")
    r = runner.invoke(app, ["train", "-p", "recipe", str(bad)])
    assert r.exit_code == 2 and "lora_r must be >= 1" in r.output and str(bad) in r.output

def test_config_json_records_the_recipe_and_the_resolved_values(tmp_path):
    from finetune_kit.runs import create_run
    cfg, run_dir = create_run(make_config({"task": "ner", "runs_dir": str(tmp_path)}))
    saved = json.loads((run_dir/"config.json").read_text())
    assert saved["recipe"] == "cpu-ner" and saved["train"]["num_train_epochs"] == 3.0
    assert saved["data"]["test_records"] == find_recipe("cpu-ner").params["test_records"]

def test_train_then_evaluate_run_is_the_main_job(tmp_path, run_cli):
    "`train` followed by `evaluate run RUN` resolves the workbook job's config and gives its figures (same seed)."
    from helpers import JOB, param_args
    p, env = {**JOB, "recipe": "none", "max_chars": 200, "max_steps": 3, "runs_dir": tmp_path}, {**__import__("os").environ, "OMP_NUM_THREADS": "1"}
    r = run_cli("run", WORKBOOKS/"finetune.ipynb", *param_args({**p, "run_id": "job"}), env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    for args in (["train", *param_args({**p, "run_id": "cli"})], ["evaluate", "run", tmp_path/"cli"]):
        r = run_cli(*args, env=env)
        assert r.returncode == 0, r.stderr[-3000:]
    cfg = {k: json.loads((tmp_path/k/"config.json").read_text()) for k in ("job", "cli")}
    assert {**cfg["job"], "run_id": "cli"} == cfg["cli"]
    m = {k: json.loads((tmp_path/k/"eval/metrics.json").read_text()) for k in ("job", "cli")}
    for key in ("n", "systems", "base", "tuned", "baseline", "intervals"): assert m["job"][key] == m["cli"][key], key
    untimed = lambda v: {**v, "reason": re.sub(r"\([^()]* s to fit, [^()]* ms per record\)", "", v["reason"])}  # costs differ
    assert untimed(m["job"]["verdict"]) == untimed(m["cli"]["verdict"])
    assert m["job"]["tuned"]["perplexity"] != m["job"]["base"]["perplexity"]  # training changed the model: a real comparison
