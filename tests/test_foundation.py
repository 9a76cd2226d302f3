"Foundation: config round trip and errors, settings precedence, papermill parameters, the tiny model."
import json, math, subprocess, sys
from pathlib import Path
import pytest
from hypothesis import given, reject, settings, strategies as st
from helpers import ROOT, BIN, JOB, param_args
from finetune_kit.config import ConfigError, RunConfig, check_param, load_config, param_specs, save_config, update_config, flatten
from finetune_kit.settings import make_config, read_settings

WORKBOOK = ROOT/"nbs/workbooks/finetune.ipynb"
TINY_ARGS = param_args(JOB)  # the workbook end to end on the tiny model, in seconds

def _value(spec):
    "A hypothesis strategy of valid values for one flat parameter."
    if spec.choices: return st.sampled_from(spec.choices)
    t = spec.type
    lim = dict(l for l in spec.limits if l[0] in ("ge", "gt", "le", "lt"))  # the parameter's range, checked by the config
    lo, hi = lim.get("ge", lim.get("gt")), lim.get("le", lim.get("lt"))
    s = {int: st.integers(-10**6 if lo is None else math.floor(lo) + ("gt" in lim),
                          10**6 if hi is None else math.ceil(hi) - ("lt" in lim)),
         float: st.floats(lo, hi, exclude_min="gt" in lim, exclude_max="lt" in lim, allow_nan=False, allow_infinity=False),
         bool: st.booleans(), str: st.text(max_size=20)}
    base = next((v for k, v in s.items() if k is t or k in getattr(t, "__args__", ())), st.text())
    return st.one_of(st.none(), base) if type(None) in getattr(t, "__args__", ()) else base

@settings(max_examples=50, deadline=None)
@given(st.data())
def test_config_json_round_trip_is_exact(tmp_path_factory, data):
    specs = param_specs()
    names = data.draw(st.lists(st.sampled_from(sorted(specs)), unique=True, max_size=12))
    values = {n: data.draw(_value(specs[n])) for n in names}
    for n, x in values.items(): check_param(n, x)  # every drawn value is valid on its own
    try: cfg = update_config(RunConfig(), values)
    except ConfigError as e:
        # only a rule spanning parameters refuses valid values together (val_size + test_size, objective x peft_method,
        # grpo's batch x num_generations); each has its row in tests/test_bad_input.py
        assert any(k in str(e) for k in ("val_size + test_size", "cannot train peft_method", "num_generations")), str(e)
        reject()
    p = save_config(cfg, tmp_path_factory.mktemp("cfg")/"config.json")
    back = load_config(p)
    assert back == cfg and flatten(back) == flatten(cfg)

@pytest.mark.parametrize("params,msg", [
    ({"learning_rat": 1e-4}, "unknown parameter 'learning_rat' (did you mean 'learning_rate'?)"),
    ({"lora_r": "eight"}, "parameter 'lora_r' must be int, got 'eight' (str)"),
    ({"packing": "yes"}, "parameter 'packing' must be bool"),
    ({"peft_method": "lorra"}, "parameter 'peft_method' must be one of"),
    ({"val_size": 0.5, "test_size": 0.5}, "val_size + test_size must be below 1"),
])
def test_bad_parameters_fail_with_one_line(params, msg):
    with pytest.raises(ConfigError) as e: make_config(params, settings=False)
    assert msg in str(e.value) and "\n" not in str(e.value)

def test_settings_sit_under_explicit_parameters(tmp_path):
    ini = tmp_path/"settings.ini"
    ini.write_text("[finetune_kit]\nseed = 5\nruns_dir = myruns\nbase_model = tiny-test\nreport_to = none\n")
    assert read_settings(ini)["runs_dir"] == str(tmp_path/"myruns")
    cfg = make_config(settings=ini)
    assert (cfg.seed, cfg.model.base_model, cfg.tracking.report_to) == (5, "tiny-test", "none")
    cfg = make_config({"seed": 9, "base_model": None}, settings=ini)
    assert (cfg.seed, cfg.model.base_model) == (9, "tiny-test")
    ini.write_text("[finetune_kit]\nseeds = 5\n")
    with pytest.raises(ConfigError, match="unknown settings.ini setting 'seeds' \\(did you mean 'seed'\\?\\)"): read_settings(ini)

@pytest.mark.slow  # papermill starts a Jupyter kernel
def test_papermill_parameters_reach_the_run_config(tmp_path):
    "The `parameters` tag survives nbdev-clean: papermill's injected seed lands in config.json."
    nb = json.loads(WORKBOOK.read_text())
    assert any("parameters" in c["metadata"].get("tags", []) for c in nb["cells"])
    out = tmp_path/"out.ipynb"
    r = subprocess.run([str(BIN/"papermill"), str(WORKBOOK), str(out), "-p", "seed", "7", "-p", "runs_dir", str(tmp_path/"runs"),
                        *TINY_ARGS, "--no-progress-bar"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    (cfg_file,) = (tmp_path/"runs").glob("*/config.json")
    assert json.loads(cfg_file.read_text())["seed"] == 7
    env = json.loads((cfg_file.parent/"env.json").read_text())
    assert env["packages"]["papermill"] and env["device"] in ("cpu", "cuda")

def test_cli_run_puts_the_executed_notebook_in_the_run_folder(tmp_path, run_cli):
    r = run_cli("run", WORKBOOK, "-p", "seed", "11", "-p", "runs_dir", tmp_path, "-p", "run_id", "job1", "-p", "learning_rate", "5e-4", *TINY_ARGS)
    assert r.returncode == 0, r.stderr[-2000:]
    cfg = load_config(tmp_path/"job1/config.json")
    assert (cfg.seed, cfg.train.learning_rate, cfg.run_id) == (11, 5e-4, "job1")
    assert (tmp_path/"job1/notebook.ipynb").exists()
    assert (tmp_path/"job1/adapter/adapter_model.safetensors").exists() and (tmp_path/"job1/eval/metrics.json").exists()

@pytest.mark.parametrize("args,msg", [
    (["-p", "learning_rat", "1e-4"], "unknown parameter 'learning_rat' (did you mean 'learning_rate'?)"),
    (["-p", "lora_r", "big"], "parameter 'lora_r' must be int, got 'big' (str)"),
])
def test_cli_run_rejects_bad_parameters_before_a_kernel_starts(tmp_path, args, msg, run_cli):
    r = run_cli("run", WORKBOOK, *args, "-p", "runs_dir", tmp_path)
    assert r.returncode == 2
    assert r.stderr.strip() == f"error: {msg}"
    assert not any(tmp_path.iterdir())

def test_tiny_model_loads_generates_and_backprops(tiny_model_dir):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    model, tok = AutoModelForCausalLM.from_pretrained(tiny_model_dir), AutoTokenizer.from_pretrained(tiny_model_dir)
    cfg = model.config
    assert (cfg.model_type, cfg.num_hidden_layers, cfg.hidden_size) == ("llama", 2, 64) and len(tok) < 1000
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"}, {"role": "assistant", "content": "Hello"}]
    text = tok.apply_chat_template(msgs, tokenize=False)
    assert "<|im_start|>system\nBe brief.<|im_end|>" in text and text.endswith("<|im_start|>assistant\nHello<|im_end|>\n")
    enc = tok.apply_chat_template(msgs[:2], add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(**enc, max_new_tokens=5, do_sample=False)
    assert out.shape[1] > enc["input_ids"].shape[1]
    assert model.generation_config.eos_token_id == tok.convert_tokens_to_ids("<|im_end|>")
    batch = tok(text, return_tensors="pt")
    loss = model(**batch, labels=batch["input_ids"]).loss
    loss.backward()
    assert torch.isfinite(loss) and all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())

def test_cli_run_failing_cell_keeps_the_notebook_and_names_the_cell(tmp_path, run_cli):
    r = run_cli("run", WORKBOOK, "-p", "runs_dir", tmp_path, "-p", "run_id", "broken", "-p", "source", str(tmp_path/"missing.jsonl"), *TINY_ARGS)
    assert r.returncode == 1
    assert "error: cell" in r.stderr and "DataError" in r.stderr and "prepare_data" in r.stderr
    assert r.stderr.strip().splitlines()[-1] == f"error: the executed notebook is kept: {tmp_path/'broken/notebook.ipynb'}"
    assert (tmp_path/"broken/notebook.ipynb").exists()
