"Training stage on the tiny model: run folder, resume after SIGKILL, determinism, DDP, tracking, faults."
import json, os, signal, subprocess, sys, time
from pathlib import Path
import pytest
import torch
from helpers import ROOT, BIN, TRAIN, TRAIN_SMALL, param_args, tiny_config
from finetune_kit.settings import make_config

def losses(run_dir):
    return [(r["step"], r["loss"]) for r in map(json.loads, (Path(run_dir)/"metrics.jsonl").read_text().splitlines()) if "loss" in r]

@pytest.fixture(scope="module")
def finished(tmp_path_factory, run_cli):
    "One uninterrupted CLI run of 24 steps."
    tmp = tmp_path_factory.mktemp("runs")
    p = {**TRAIN, "runs_dir": tmp, "max_steps": 24, "save_steps": 4, "run_id": "straight"}
    r = run_cli("train", *param_args(p))
    assert r.returncode == 0, r.stderr[-3000:]
    return tmp/"straight"

def test_run_folder_holds_every_record(finished):
    names = {p.name for p in finished.iterdir()}
    assert {"config.json", "env.json", "data.json", "metrics.jsonl", "manifest.json", "summary.json", "training_curve.png",
            "checkpoints", "adapter"} <= names
    rows = [json.loads(l) for l in (finished/"metrics.jsonl").read_text().splitlines()]
    step_rows = [r for r in rows if "loss" in r]
    assert [r["step"] for r in step_rows] == list(range(1, 25))
    assert all({"loss", "learning_rate", "grad_norm", "elapsed"} <= r.keys() for r in step_rows)
    assert all(r["tokens_per_s"] > 0 for r in step_rows[1:])
    assert sorted(p.name for p in (finished/"checkpoints").glob("checkpoint-*")) == ["checkpoint-20", "checkpoint-24"]  # last K=2
    assert (finished/"adapter/adapter_model.safetensors").exists() and not list((finished/"adapter").glob("*.bin"))
    s = json.loads((finished/"summary.json").read_text())
    assert s["steps"] == 24 and s["tokens_per_s"] > 0 and s["peak_rss_mb"] > 0 and s["adapter_mb"] > 0
    assert 0 < s["loss_token_share"] < 0.5  # completion-only: the prompt carries no loss

def test_generation_config_stops_at_the_templates_end_of_turn(finished):
    from transformers import AutoTokenizer, GenerationConfig
    from finetune_kit.models import end_of_turn_id
    tok = AutoTokenizer.from_pretrained(finished/"adapter")
    gc = GenerationConfig.from_pretrained(finished/"adapter")
    eot = end_of_turn_id(tok)
    assert tok.convert_ids_to_tokens(eot) == "<|im_end|>" and eot in gc.eos_token_id
    s = json.loads((finished/"summary.json").read_text())
    assert s["records_without_end_of_turn"] == 0

def test_sigkill_then_resume_equals_an_uninterrupted_run(finished, tmp_path, run_cli):
    p = {**TRAIN, "runs_dir": tmp_path, "max_steps": 24, "save_steps": 4, "run_id": "killed"}
    proc = subprocess.Popen([str(BIN/"finetune-kit"), "train", *param_args(p)], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    ck = tmp_path/"killed/checkpoints"
    deadline = time.time() + 300
    def saved(): return [int(c.name.split("-")[1]) for c in ck.glob("checkpoint-*")]  # (rotation deletes the old ones)
    while time.time() < deadline and not any(n >= 8 for n in saved()) and proc.poll() is None: time.sleep(0.02)
    proc.send_signal(signal.SIGKILL); proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    done = {int(c.name.split("-")[1]) for c in ck.glob("checkpoint-*")}
    assert max(done) < 24 and not (tmp_path/"killed/adapter").exists()
    r = run_cli("train", "--resume", tmp_path/"killed")
    assert r.returncode == 0, r.stderr[-3000:]
    resumed, straight = dict(losses(tmp_path/"killed")), dict(losses(finished))
    assert resumed[24] == pytest.approx(straight[24], abs=1e-6)
    assert json.loads((tmp_path/"killed/summary.json").read_text())["steps"] == 24

def test_resume_inside_the_second_epoch_replays_the_uninterrupted_data_order(tmp_path):
    "Resumed from a checkpoint inside its second epoch, a run trains on the batches, so gets the losses, it would have."
    import shutil
    from finetune_kit.train import train
    res = train(tiny_config(TRAIN_SMALL, runs_dir=str(tmp_path), run_id="whole", max_steps=10, save_steps=4,
                            save_total_limit=3))
    run = tmp_path/"cut"; shutil.copytree(res.run_dir, run)  # as if killed after checkpoint-8
    shutil.rmtree(run/"checkpoints/checkpoint-10"); shutil.rmtree(run/"adapter"); (run/"summary.json").unlink()
    assert 1 < json.loads((run/"checkpoints/checkpoint-8/trainer_state.json").read_text())["epoch"] < 2
    train(None, run_dir=run, resume=True)
    assert losses(run) == losses(res.run_dir) and len(losses(run)) == 10

def test_same_manifest_gives_identical_metrics(finished, tmp_path, run_cli):
    p = {**TRAIN, "runs_dir": tmp_path, "max_steps": 24, "save_steps": 4, "run_id": "again"}
    r = run_cli("train", *param_args(p))
    assert r.returncode == 0, r.stderr[-3000:]
    m1, m2 = (json.loads((d/"manifest.json").read_text()) for d in (finished, tmp_path/"again"))
    calm = lambda m: {k: v for k, v in m.items() if k != "run_id"} | {  # the machine's load (at start, and the count's
        "threads": {k: v for k, v in m["threads"].items()                 # refits to it) is the machine's, not the run's
                    if k not in ("load_1m", "others_load", "warning", "changes")}}
    assert calm(m1) == calm(m2)
    assert m1["data_fingerprint"] and m1["chat_template_sha256"] and m1["packages"]["torch"]
    assert losses(finished) == losses(tmp_path/"again")

@pytest.mark.slow  # torchrun starts two Python processes
def test_torchrun_two_cpu_processes(tmp_path):
    p = {**TRAIN, "runs_dir": tmp_path, "max_steps": 6, "save_steps": 100, "run_id": "ddp"}
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([str(BIN/"torchrun"), "--nproc_per_node", "2", "--master_port", "29533", "-m", "finetune_kit.cli", "train",
                        *param_args(p)], cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    man = json.loads((tmp_path/"ddp/manifest.json").read_text())
    s = json.loads((tmp_path/"ddp/summary.json").read_text())
    assert man["world_size"] == 2 and s["world_size"] == 2 and s["steps"] == 6
    assert (tmp_path/"ddp/adapter/adapter_model.safetensors").exists()

def test_secrets_never_land_in_the_run_folder(tmp_path, run_cli):
    secret = "sk-planted-0123456789abcdef"
    env = {**os.environ, "WANDB_API_KEY": secret, "HF_TOKEN": secret, "OPENAI_API_KEY": secret, "WANDB_MODE": "offline"}
    p = {**TRAIN, "runs_dir": tmp_path, "max_steps": 3, "save_steps": 2, "run_id": "secret", "report_to": "wandb"}
    r = run_cli("train", *param_args(p), env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert list((tmp_path/"secret/wandb").glob("offline-run-*")), "W&B offline run expected in the run folder"
    hits = [f for f in tmp_path.rglob("*") if f.is_file() and secret.encode() in f.read_bytes()]
    assert hits == []
    assert secret not in r.stdout + r.stderr

def test_mlflow_backend_logs_params_and_metrics(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path/'ml.db'}")
    from finetune_kit.train import train
    res = train(tiny_config(TRAIN, runs_dir=str(tmp_path), max_steps=4, save_steps=100, report_to="mlflow", project="kit-test"))
    import mlflow
    exp = mlflow.get_experiment_by_name("kit-test")
    (run,) = mlflow.search_runs([exp.experiment_id], output_format="list")
    assert run.data.params["kit.data_fingerprint"] == json.loads((res.run_dir/"data.json").read_text())["fingerprint"]
    assert "loss" in run.data.metrics and run.data.params["kit.lora_r"] == "16"

def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    from transformers import TrainerCallback
    from finetune_kit.train import train
    from finetune_kit.checkpoints import TrainingError
    class Poison(TrainerCallback):
        def on_step_end(self, args, state, control, model=None, **kw):
            if state.global_step == 5:
                with torch.no_grad():
                    for p in model.parameters():
                        if p.requires_grad: p.fill_(float("nan"))
    with pytest.raises(TrainingError, match=r"step 6: loss is nan \(NaN/inf\) at learning_rate .*-p learning_rate"):
        train(tiny_config(TRAIN, runs_dir=str(tmp_path), max_steps=10, save_steps=4, run_id="nan"), callbacks=[Poison()])
    assert sorted(p.name for p in (tmp_path/"nan/checkpoints").glob("checkpoint-*")) == ["checkpoint-4"]
    assert not (tmp_path/"nan/adapter").exists()

def test_a_batch_without_loss_tokens_stops(tmp_path, tiny_model_dir):
    from datasets import Dataset
    from finetune_kit.models import load_model
    from finetune_kit.adapters import apply_peft
    from finetune_kit.train import FinetuneTrainer, training_args, check_trainable
    from finetune_kit.checkpoints import TrainingError
    cfg = tiny_config(TRAIN, runs_dir=str(tmp_path), max_steps=1)
    model, tok = load_model(cfg)
    ds = Dataset.from_list([{"prompt": [{"role": "user", "content": "a b c"}], "completion": [{"role": "assistant", "content": "x"}]}])
    tr = FinetuneTrainer(model=apply_peft(model, cfg), args=training_args(cfg, tmp_path/"ck"), processing_class=tok, train_dataset=ds)
    ids = torch.tensor([[5, 6, 7, 8]])
    with pytest.raises(TrainingError, match="no token in this batch carries loss"):
        tr.compute_loss(tr.model, {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": torch.full_like(ids, -100)})
    with pytest.raises(TrainingError, match="training set is empty"): check_trainable(ds.select([]), 0)

def test_truncation_that_cuts_every_answer_stops_before_training(tmp_path, run_cli):
    r = run_cli("train", *param_args({**TRAIN, "runs_dir": tmp_path, "max_steps": 2, "max_length": 8}))
    assert r.returncode == 2
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and ("training split is empty" in last or "no record was kept" in last) \
        and "Traceback" not in r.stderr, r.stderr[-2000:]  # data prepare now fails first when nothing is kept

def test_compact_loss_equals_trls_loss(tmp_path):
    "Projecting only the labelled positions gives TRL's loss value, so the speed-up changes no numbers."
    from datasets import Dataset
    from finetune_kit.models import load_model
    from finetune_kit.adapters import apply_peft
    from finetune_kit.train import FinetuneTrainer, training_args
    cfg = tiny_config(TRAIN, runs_dir=str(tmp_path), max_steps=1)
    model, tok = load_model(cfg)
    rows = [{"prompt": [{"role": "user", "content": "the team won " * (i + 1)}], "completion": [{"role": "assistant", "content": "sport"}]} for i in range(4)]
    tr = FinetuneTrainer(model=apply_peft(model, cfg), args=training_args(cfg, tmp_path/"ck", per_device_train_batch_size=4),
                         processing_class=tok, train_dataset=Dataset.from_list(rows))
    batch = tr._prepare_inputs(next(iter(tr.get_train_dataloader())))
    tr.model.eval()
    with torch.no_grad():
        tr.compact_loss = True; ours = tr.compute_loss(tr.model, dict(batch))
        tr.compact_loss = False; theirs = tr.compute_loss(tr.model, dict(batch))
    assert ours.item() == pytest.approx(theirs.item(), rel=1e-5)

def test_eval_on_start_puts_a_held_out_point_before_the_first_step(tmp_path):
    "The start of a held-out curve: evaluated before step 1, then every eval_steps (GRPO's held-out reward uses it)."
    from finetune_kit.files import read_jsonl
    from finetune_kit.train import train
    res = train(tiny_config(TRAIN_SMALL, runs_dir=str(tmp_path), max_steps=4, eval_steps=2, eval_on_start=True,
                            run_id="curve"))
    steps = [r["step"] for r in read_jsonl(res.run_dir/"metrics.jsonl") if "eval_loss" in r]
    assert steps[:3] == [0, 2, 4], steps
    res = train(tiny_config(TRAIN_SMALL, runs_dir=str(tmp_path), max_steps=4, eval_steps=2, run_id="plain"))
    assert [r["step"] for r in read_jsonl(res.run_dir/"metrics.jsonl") if "eval_loss" in r][0] == 2
