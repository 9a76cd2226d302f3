"The torch_compile setting: where it is supported (a table), and a clean fall back to eager with the reason in manifest.json."
import json
import pytest
import torch
from helpers import TRAIN_SMALL, tiny_config
from finetune_kit.compiling import compile_model, compile_support, uncompile
from finetune_kit.testing import load_tiny

SUPPORT = [  # device, dynamo works, C++ compiler, Triton -> None (supported) or words the reason holds
    ("cpu", True, True, False, None),
    ("cpu", True, False, False, "no C++ compiler"),
    ("cuda", True, False, True, None),  # a GPU needs Triton, not a C++ compiler
    ("cuda", True, True, False, "no Triton"),
    ("mps", True, True, False, "MPS"),
    ("cpu", False, True, False, "not supported on Python"),
]

@pytest.mark.parametrize("device,dynamo,cxx,triton,reason", SUPPORT, ids=[f"{r[0]}-{i}" for i, r in enumerate(SUPPORT)])
def test_compile_support_per_platform(device, dynamo, cxx, triton, reason):
    got = compile_support(device, dynamo=dynamo, cxx=cxx, triton=triton)
    assert got is None if reason is None else reason in got

def test_compile_raising_leaves_the_model_eager(monkeypatch):
    model, _ = load_tiny()
    monkeypatch.setattr(torch, "compile", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("backend exploded")))
    monkeypatch.setattr("finetune_kit.compiling._has_cxx", lambda: True)
    info = compile_model(model, "regions", "cpu")
    assert info == {"asked": "regions", "used": "none", "reason": "torch.compile failed: RuntimeError: backend exploded"}
    assert uncompile(model) == 0

def _broken_compile(fn, *a, **k):
    "A torch.compile whose compiled function raises when called: a failure in the first step, as inductor's would be."
    def call(*a, **k): raise RuntimeError("inductor: C++ compile error in the first step")
    return call

FALLBACKS = [  # what goes wrong -> what the manifest says
    ("first_step", "the first compiled step failed (RuntimeError: inductor: C++ compile error in the first step)"),
    ("compile_call", "torch.compile failed: RuntimeError: no backend"),
    ("no_compiler", "no C++ compiler for inductor's CPU code (install g++ or clang++, or set CXX)"),
]

@pytest.mark.parametrize("fault,reason", FALLBACKS, ids=[f[0] for f in FALLBACKS])
def test_training_falls_back_to_eager_and_says_why(fault, reason, tmp_path, monkeypatch, capsys):
    import finetune_kit.compiling as C
    from finetune_kit.train import train
    monkeypatch.setattr(C, "_has_cxx", lambda: fault != "no_compiler")
    if fault == "first_step": monkeypatch.setattr(torch, "compile", _broken_compile)
    if fault == "compile_call":
        monkeypatch.setattr(torch, "compile", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("no backend")))
    cfg = tiny_config(TRAIN_SMALL, max_steps=2, save_steps=100, runs_dir=str(tmp_path), torch_compile="model")
    res = train(cfg)
    assert res.summary["steps"] == 2 and res.summary["train_loss"] > 0
    m = json.loads((res.run_dir/"manifest.json").read_text())
    assert m["compile"] == {"asked": "model", "used": "none", "reason": reason}
    assert f"warning: torch_compile=model: {reason}; training eager" in capsys.readouterr().err

def test_no_compile_by_default_is_recorded(tmp_path):
    from finetune_kit.train import train
    res = train(tiny_config(TRAIN_SMALL, max_steps=1, save_steps=100, runs_dir=str(tmp_path)))
    m = json.loads((res.run_dir/"manifest.json").read_text())
    assert m["compile"] == {"asked": "none", "used": "none", "reason": None}

@pytest.mark.slow  # inductor compiles the tiny model's blocks (C++), a minute or more on a busy CPU
@pytest.mark.skipif(compile_support("cpu") is not None, reason="torch.compile unsupported here")
def test_compiled_regions_train_like_eager(tmp_path):
    "Compiled and eager training on the same seed and data give the same losses within bf16/fp32 rounding."
    from finetune_kit.train import train
    runs = {}
    for how in ("none", "regions"):
        cfg = tiny_config(TRAIN_SMALL, max_steps=3, save_steps=100, runs_dir=str(tmp_path), run_id=how, torch_compile=how)
        runs[how] = train(cfg)
    m = json.loads((runs["regions"].run_dir/"manifest.json").read_text())
    assert m["compile"] == {"asked": "regions", "used": "regions", "reason": None}
    a, b = (runs[k].summary["train_loss"] for k in ("none", "regions"))
    assert abs(a - b) / a < 0.02, (a, b)

@pytest.mark.slow  # compiles the tiny model's blocks (reuses what the test above compiled, when it ran first)
@pytest.mark.skipif(compile_support("cpu") is not None, reason="torch.compile unsupported here")
def test_the_profiler_table_of_a_compiled_step_shows_the_compiled_kernels():
    "profile_steps compiles as train does: the table says regions were used, and inductor's fused kernels replace the eager elementwise ops."
    from finetune_kit.settings import make_config
    from finetune_kit.speed import profile_steps
    tables = {}
    for how in ("none", "regions"):
        cfg = make_config({"base_model": "tiny-test", "max_records": 40, "max_chars": 200, "report_to": "none",
                           "torch_compile": how}, settings=False)
        tables[how] = profile_steps(cfg, steps=1, warmup=2)
    eager, compiled = tables["none"], tables["regions"]
    assert compiled.attrs["compiled"] == {"asked": "regions", "used": "regions", "reason": None}
    assert eager.attrs["compiled"]["used"] == "none" and "compiled" not in set(eager.group)
    assert compiled[compiled.group == "compiled"].ms_per_step.sum() > 0
    silu = lambda t: t[t.op == "aten::silu"].calls_per_step.sum()
    assert silu(eager) > 0 and silu(compiled) == 0, (silu(eager), silu(compiled))  # fused into the blocks' kernels
