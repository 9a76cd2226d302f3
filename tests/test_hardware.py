"""The hardware arguments per device class (CPU with and without bf16, a bf16 GPU, an fp16-only GPU) for each kind of
fine-tuning, and the CUDA loss path (TRL's own loss inside the kit's fail-fast checks), decided and run on a CPU."""
import pytest
import torch
from finetune_kit.settings import make_config
from finetune_kit.models import device_settings
from finetune_kit.train import FinetuneTrainer, hardware_args, training_args, uses_compact_loss
from finetune_kit.checkpoints import TrainingError

from helpers import ROOT, TRAIN_SMALL, tiny_config

CPU, CPU_BF16, GPU_BF16, GPU_FP16 = (False, False, 0), (False, True, 0), (True, True, 9), (True, False, 7)

# device class, method -> weights dtype, 4-bit compute dtype, bf16, fp16, tf32, optim, gradient checkpointing, compact
TABLE = [
    (CPU,      "lora",  "float32",  "float32",  False, False, None, "adamw_torch",       False, True),
    (CPU,      "qlora", "float32",  "float32",  False, False, None, "adamw_torch",       True,  True),
    (CPU,      "full",  "float32",  "float32",  False, False, None, "adamw_torch",       False, True),
    (CPU_BF16, "lora",  "bfloat16", "bfloat16", True,  False, None, "adamw_torch",       False, True),
    (CPU_BF16, "qlora", "bfloat16", "bfloat16", True,  False, None, "adamw_torch",       True,  True),
    (CPU_BF16, "full",  "float32",  "bfloat16", True,  False, None, "adamw_torch",       False, True),
    (GPU_BF16, "lora",  "bfloat16", "bfloat16", True,  False, True, "adamw_torch_fused", False, False),
    (GPU_BF16, "qlora", "bfloat16", "bfloat16", True,  False, True, "paged_adamw_8bit",  True,  False),
    (GPU_BF16, "full",  "bfloat16", "bfloat16", True,  False, True, "adamw_torch_fused", False, False),
    (GPU_FP16, "lora",  "float16",  "float32",  False, True,  None, "adamw_torch_fused", False, False),
    (GPU_FP16, "qlora", "float16",  "float32",  False, True,  None, "paged_adamw_8bit",  True,  False),
    (GPU_FP16, "full",  "float32",  "float32",  False, True,  None, "adamw_torch_fused", False, False),  # fp32 master
]

@pytest.mark.parametrize("caps,method,weights,compute,bf16,fp16,tf32,optim,gc,compact", TABLE,
                         ids=[f"{['cpu', 'cpu-bf16', 'gpu-bf16', 'gpu-fp16'][[CPU, CPU_BF16, GPU_BF16, GPU_FP16].index(r[0])]}-{r[1]}"
                              for r in TABLE])
def test_hardware_arguments_per_device_class(caps, method, weights, compute, bf16, fp16, tf32, optim, gc, compact):
    cfg = make_config(peft_method=method, settings=False)
    cuda, has_bf16, _ = caps
    ds = device_settings(cuda=cuda, bf16=has_bf16, local_rank=0, full=method == "full", sharded=None)
    hw = hardware_args(cfg, caps=caps)
    assert (ds.dtype, ds.compute_dtype, ds.mixed_precision) == (weights, compute, "bf16" if bf16 else "fp16" if fp16 else "no")
    assert (hw["bf16"], hw["fp16"], hw["tf32"], hw["optim"], hw["activation_checkpointing"], hw["use_cpu"]) == \
        (bf16, fp16, tf32, optim, gc, not cuda)
    assert ds.device_map == ({"": 0} if cuda else None)
    assert uses_compact_loss(method, cuda=cuda) == compact

def test_training_args_use_no_deprecated_name(tmp_path):
    "transformers 5.23 renamed `gradient_checkpointing*` to `activation_checkpointing*`; `warmup_steps` below 1 is a share."
    import warnings
    with warnings.catch_warnings():
        warnings.filterwarnings("error", category=FutureWarning)
        warnings.filterwarnings("error", category=DeprecationWarning, module="(transformers|trl|peft|accelerate)")
        for method in ("lora", "qlora"):
            for gc in (None, True, False):
                cfg = make_config(peft_method=method, gradient_checkpointing=gc, warmup_ratio=0.1, settings=False)
                args = training_args(cfg, tmp_path)
                assert args.activation_checkpointing is (method == "qlora" if gc is None else gc)
                assert args.activation_checkpointing_kwargs == ({"use_reentrant": False} if args.activation_checkpointing
                                                                else None)
    assert args.get_warmup_steps(200) == 20  # 10% of 200 steps, not int(0.1) == 0 steps

@pytest.mark.parametrize("caps,method", [r[:2] for r in TABLE], ids=[f"{i}-{r[1]}" for i, r in enumerate(TABLE)])
def test_thread_settings_leave_the_hardware_rule_alone(caps, method):
    "Each device class and method gets the same precision, optimizer and checkpointing whatever the thread settings."
    cuda, has_bf16, _ = caps
    picks = []
    for threads in ({}, {"threads": 1, "omp_wait_policy": "passive"}, {"threads": 64}):
        cfg = make_config(peft_method=method, settings=False, **threads)
        ds = device_settings(cfg.model.dtype, cfg.model.attn_implementation, cuda=cuda, bf16=has_bf16, local_rank=0,
                             full=method == "full", sharded=None)
        picks.append((hardware_args(cfg, caps=caps), ds))
    assert picks[0] == picks[1] == picks[2]

@pytest.mark.parametrize("sharded", ["fsdp", "deepspeed"])
def test_no_device_map_under_fsdp_or_zero(sharded, monkeypatch):
    monkeypatch.setenv("ACCELERATE_USE_FSDP" if sharded == "fsdp" else "ACCELERATE_USE_DEEPSPEED", "true")
    assert device_settings(cuda=True, bf16=True, local_rank=1).device_map is None
    assert device_settings(cuda=True, bf16=True, local_rank=1, sharded=None).device_map == {"": 1}

@pytest.fixture(scope="module")
def cuda_path_trainer(tmp_path_factory):
    "A FinetuneTrainer on the tiny model with the loss path the CUDA branch chooses (TRL's own)."
    from datasets import Dataset
    from finetune_kit.models import load_model
    from finetune_kit.adapters import apply_peft
    cfg = tiny_config(max_steps=1, dtype="float32")
    model, tok = load_model(cfg)
    rows = [{"prompt": [{"role": "user", "content": "the team won " * (i + 1)}],
             "completion": [{"role": "assistant", "content": "sport"}]} for i in range(4)]
    tr = FinetuneTrainer(model=apply_peft(model, cfg), processing_class=tok, train_dataset=Dataset.from_list(rows),
                         args=training_args(cfg, tmp_path_factory.mktemp("ck"), per_device_train_batch_size=4,
                                            disable_tqdm=True))
    tr.compact_loss = uses_compact_loss("lora", cuda=True)
    return tr

def test_cuda_branch_uses_trls_loss_inside_the_fail_fast_checks(cuda_path_trainer, monkeypatch):
    tr = cuda_path_trainer
    assert tr.compact_loss is False
    calls = []
    monkeypatch.setattr(FinetuneTrainer, "_compact_loss", lambda *a, **k: calls.append("kit") or 1 / 0)
    batch = tr._prepare_inputs(next(iter(tr.get_train_dataloader())))
    tr.model.train()
    loss = tr.compute_loss(tr.model, dict(batch))
    assert calls == [] and torch.isfinite(loss) and "entropy" in tr._metrics["train"]  # TRL's metrics, TRL's path
    ids = torch.tensor([[5, 6, 7, 8]])
    with pytest.raises(TrainingError, match="no token in this batch carries loss"):
        tr.compute_loss(tr.model, {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": torch.full_like(ids, -100)})
    p = next(p for p in tr.model.parameters() if p.requires_grad)
    saved = p.detach().clone()
    with torch.no_grad(): p.fill_(float("nan"))
    try:
        with pytest.raises(TrainingError, match=r"loss is nan"): tr.compute_loss(tr.model, dict(batch))
    finally:
        with torch.no_grad(): p.copy_(saved)

def test_training_stage_takes_the_loss_path_from_the_device(tmp_path, monkeypatch):
    "train() on the CUDA decision (forced on this CPU) runs TRL's loss for every step and never the compact one."
    import finetune_kit.train as T
    monkeypatch.setattr(T, "uses_compact_loss", lambda method: uses_compact_loss(method, cuda=True))
    monkeypatch.setattr(FinetuneTrainer, "_compact_loss", lambda *a, **k: 1 / 0)
    cfg = tiny_config(TRAIN_SMALL, max_steps=2, save_steps=100, runs_dir=str(tmp_path))
    res = T.train(cfg)
    assert res.summary["steps"] == 2 and res.summary["train_loss"] > 0

def test_pyproject_ranges_hold_the_tested_lock():
    "Every dependency's range in pyproject.toml admits its pin in constraints.txt; the GPU extras exist, unpinned."
    import tomllib
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name as canon
    proj = tomllib.loads((ROOT/"pyproject.toml").read_text())["project"]
    pins = dict(l.split("==", 1) for l in (ROOT/"constraints.txt").read_text().splitlines() if "==" in l and not l.startswith("#"))
    pins = {canon(k): v.strip() for k, v in pins.items()}
    reqs = {canon(r.name): r for r in map(Requirement, proj["dependencies"])}
    bad = {n: (str(r.specifier), pins[n]) for n, r in reqs.items() if n in pins and not r.specifier.contains(pins[n], prereleases=True)}
    assert bad == {}
    assert [n for n in reqs if n not in pins] == []
    for name, floor in (("scikit-learn", "1.6"), ("scipy", "1.15")):  # GroupKFold(shuffle=...), bootstrap(rng=...)
        assert not reqs[name].specifier.contains({"scikit-learn": "1.5.2", "scipy": "1.14.1"}[name]) and reqs[name].specifier.contains(floor)
    assert not reqs["optuna"].specifier.contains("6.0") and reqs["optuna"].specifier.contains(pins["optuna"])
    extras = proj["optional-dependencies"]
    assert {"gpu", "flash-attn", "liger", "vllm", "deepspeed"} <= set(extras)
    for extra in ("flash-attn", "liger", "vllm", "deepspeed"):
        (r,) = map(Requirement, extras[extra])
        assert r.specifier and canon(r.name) not in pins  # a range; never in the CPU lock

def test_liger_is_asked_for_and_guarded(monkeypatch):
    import importlib.util
    from finetune_kit.config import ConfigError
    cfg = make_config(use_liger_kernel=True, settings=False)
    assert hardware_args(cfg, caps=CPU_BF16)["use_liger_kernel"] is False  # CPU: not used
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "liger_kernel" else real(n, *a))
    with pytest.raises(ConfigError, match=r"finetune-kit\[liger\]"): hardware_args(cfg, caps=GPU_BF16)
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: object() if n == "liger_kernel" else real(n, *a))
    assert hardware_args(cfg, caps=GPU_BF16)["use_liger_kernel"] is True
    assert hardware_args(make_config(settings=False), caps=GPU_BF16)["use_liger_kernel"] is False

def test_flash_attention_when_installed_and_packing(monkeypatch):
    import finetune_kit.models as M
    monkeypatch.setattr(M, "has_flash_attn", lambda: True)
    assert device_settings(cuda=True, bf16=True, packing=True, sharded=None).attn_implementation == "flash_attention_2"
    assert device_settings(cuda=True, bf16=True, packing=False, sharded=None).attn_implementation == "sdpa"
    assert device_settings(cuda=False, bf16=True, packing=True, sharded=None).attn_implementation == "eager"
    monkeypatch.setattr(M, "has_flash_attn", lambda: False)
    assert device_settings(cuda=True, bf16=True, packing=True, sharded=None).attn_implementation == "sdpa"

@pytest.mark.slow  # runs scripts/gpu_smoke.py as a Python process, twice
def test_gpu_smoke_prints_one_line_per_check():
    "Without CUDA the smoke script stops with one line (exit 2); on a CPU by request its checks run, one line each."
    import subprocess, sys
    r = subprocess.run([sys.executable, "scripts/gpu_smoke.py"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and len(r.stdout.strip().splitlines()) == 1 and "no CUDA" in r.stdout
    r = subprocess.run([sys.executable, "scripts/gpu_smoke.py", "--allow-cpu", "--model", "tiny-test", "--steps", "2",
                        "--batch", "4", "--records", "60", "--only", "device,lora,trl_loss,full_fp16,vllm,ddp,fsdp"],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    lines = r.stdout.strip().splitlines()
    assert r.returncode == 0, r.stderr[-2000:]
    assert [l.split(":")[0] for l in lines] == ["SKIP device", "PASS lora", "SKIP trl_loss", "SKIP full_fp16", "SKIP vllm",
                                               "SKIP ddp", "SKIP fsdp"], lines

def test_qlora_under_fsdp_stores_4bit_weights_in_the_compute_dtype(monkeypatch):
    "FSDP-QLoRA: the 4-bit weights are stored in the compute dtype (so FSDP can shard them with the rest), no device_map."
    import torch
    from finetune_kit.models import is_4bit, load_model
    cfg = tiny_config(peft_method="qlora")
    model, _ = load_model(cfg)
    assert {p.dtype for p in model.parameters() if type(p).__name__ == "Params4bit"} == {torch.uint8}
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    model, _ = load_model(cfg)
    ds = device_settings()
    assert is_4bit(model) and ds.device_map is None
    assert {p.dtype for p in model.parameters() if type(p).__name__ == "Params4bit"} == {getattr(torch, ds.compute_dtype)}
