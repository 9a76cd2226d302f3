"The command line: one parameter path (-p NAME VALUE, --params-json) with help generated from the config's fields."
import json, re
from pathlib import Path
import pytest
from typer.testing import CliRunner
from helpers import FIX, cli_commands
from finetune_kit.cli import app
from finetune_kit.cli.core import stage_params
from finetune_kit.config import param_specs

runner = CliRunner()

@pytest.mark.parametrize("cmd,present,absent", [
    (["data", "prepare"], ["task [classification|ner|summarization|instruction|chat|prompt_completion|preference|unpaired_preference]",
                           "label_prompt [list|omit|describe]", "max_length INTEGER", "seed INTEGER", "pii_scrub BOOLEAN"],
     ["lora_r", "learning_rate", "report_to", "data_dir"]),
    (["evaluate", "run"], ["eval_split [test|validation|train]", "report_to [wandb|mlflow|none]", "base_model TEXT",
                           "max_eval_samples INTEGER|none", "seed INTEGER"], ["lora_r", "max_records"]),
    (["train"], ["peft_method [lora|qlora|dora|adalora|prompt_tuning|prefix_tuning|ia3|full]", "max_records", "report_to"], []),
    (["run"], ["lr_scheduler_type [linear|cosine|constant|constant_with_warmup]", "run_id TEXT|none"], []),
    (["review", "make"], ["review_samples INTEGER", "seed INTEGER"], ["lora_r"]),
])
def test_help_lists_the_stage_parameters_with_types_defaults_and_choices(cmd, present, absent):
    r = runner.invoke(app, [*cmd, "--help"], terminal_width=200)
    assert r.exit_code == 0, r.output
    params = r.output[r.output.index("Parameters (-p NAME VALUE"):]
    for p in present: assert p in params, (p, params)
    for p in absent: assert f"\n  {p} " not in params, p
    assert "[default: 400" in params or cmd != ["data", "prepare"]  # 400 (settings.ini): the suite's settings

def test_help_defaults_come_from_settings_ini(tmp_path, monkeypatch):
    (tmp_path/"settings.ini").write_text("[finetune_kit]\nbase_model = tiny-test\nreport_to = none\n")
    monkeypatch.setenv("FINETUNE_KIT_SETTINGS", str(tmp_path/"settings.ini"))
    r = runner.invoke(app, ["evaluate", "run", "--help"], terminal_width=200)
    assert "[default: tiny-test (settings.ini)]" in r.output and "[default: none (settings.ini)]" in r.output

SPECS = param_specs()
def section(*names): return {n for n, s in SPECS.items() if s.section in names}

# The parameters each command reads, written out here from what the command does (not from the lists the commands
# are built with): the test fails when a command's --help gains or loses one, or a new command takes parameters.
READS = {
    "run": set(SPECS), "train": set(SPECS),  # a whole run, every stage
    "data prepare": section("data") - {"source", "data_dir"} | {"seed", "max_length", "recipe"},  # the source is an argument
    "evaluate run": section("eval", "model", "tracking") | {"seed", "runs_dir", "run_id", "recipe"},
    "review make": {"review_samples", "seed"},
    "export": {"base_model", "peft_method", "trust_remote_code"},
    "serve": section("model") | {"runs_dir"},
    "monitor": {"seed"},
    "models info": {"trust_remote_code"},
    "tune": set(SPECS) - {"source", "eval_split"},  # every trial's parameters; the source is an argument, eval_split refused
    "synth generate": section("model") | {"seed", "task", "label_set", "near_dup_threshold", "text_field", "label_field"},
    "data mistakes": {"eval_batch_size", "max_new_tokens", "seed"},  # the SFT model answers its training prompts
}

def help_params(cmd:str) -> set[str]:
    "The names `finetune-kit <cmd> --help` lists under 'Parameters (-p NAME VALUE ...)' (none: no such block)."
    r = runner.invoke(app, [*cmd.split(), "--help"], terminal_width=200)
    assert r.exit_code == 0, r.output
    if "Parameters (-p NAME VALUE" not in r.output: return set()
    block = r.output[r.output.index("Parameters (-p NAME VALUE"):].splitlines()[1:]
    return {m[1] for l in block if (m := re.match(r"  ([a-z][a-z0-9_]*)(?: |$)", l))}

def test_every_parameter_is_somewhere_and_train_reads_them_all():
    listed = {c: names for c in cli_commands(app) if (names := help_params(c))}
    assert listed.keys() == READS.keys()
    for c, names in listed.items(): assert names == READS[c], (c, sorted(names ^ READS[c]))
    assert set().union(*listed.values()) == set(SPECS) == listed["train"]

@pytest.mark.parametrize("args,msg", [
    (["train", "-p", "learning_rat", "1e-4"], "error: unknown parameter 'learning_rat' (did you mean 'learning_rate'?)"),
    (["data", "prepare", "bbc", "--out", "x", "-p", "max_recrds", "5"], "error: unknown parameter 'max_recrds' (did you mean 'max_records'?)"),
    (["data", "prepare", "bbc", "--out", "x", "-p", "lora_r", "5"], "error: parameter 'lora_r' is not read by `data prepare` (see --help)"),
    (["data", "prepare", "bbc", "--out", "x", "--max-records", "5"],
     "error: No such option: --max-records (run-config parameters are given as -p max_records VALUE)"),
    (["evaluate", "run", "x", "-p", "eval_split", "dev"], "error: parameter 'eval_split' must be one of test, validation, train; got 'dev'"),
    (["train", "-p", "lora_r"], "error: Invalid value: -p needs NAME VALUE"),
    (["evaluate", "review", "import", "x.csv"], "error: No such command 'review'."),
])
def test_bad_command_lines_are_one_line_exit_2(args, msg):
    r = runner.invoke(app, args)
    assert r.exit_code == 2 and r.output == msg + "\n", r.output

def test_data_prepare_parameters_reach_the_config(tmp_path):
    (tmp_path/"p.json").write_text(json.dumps({"seed": 3, "label_prompt": "describe", "max_chars": 50}))
    r = runner.invoke(app, ["data", "prepare", str(FIX/"classification.jsonl"), "--out", str(tmp_path/"o"), "--params-json",
                            str(tmp_path/"p.json"), "-p", "text_field", "body", "-p", "label_field", "topic", "-p", "seed", "9",
                            "-p", "test_size", "0", "-p", "max_length", "256", "-p", "pii_scrub", "no"])
    assert r.exit_code == 0, r.output
    dj = json.loads((tmp_path/"o/data.json").read_text())
    c = dj["config"]
    assert (c["seed"], c["label_prompt"], c["max_chars"], c["max_length"], c["pii_scrub"], c["test_size"]) == (9, "describe", 50, 256, False, 0.0)
    assert dj["split"]["seed"] == 9 and dj["counts"]["splits"]["test"] == 0  # -p wins over the file
    assert r.output.startswith(f"prepared {tmp_path/'o'}: ") and "fingerprint " in r.output

def test_console_script_errors_are_one_line_on_stderr(run_cli):
    r = run_cli("version")
    assert r.returncode == 0 and r.stdout.strip()
    r = run_cli("train", "-p", "lora_rank", "8")
    assert r.returncode == 2 and r.stderr == "error: unknown parameter 'lora_rank' (did you mean 'lora_r'?)\n"
