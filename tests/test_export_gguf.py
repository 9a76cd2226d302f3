"""GGUF export on the tiny model: llama.cpp's converter writes the file, transformers' GGUF reader loads it back and it
answers like base + adapter, and so does llama.cpp itself where its binding is installed; what llama.cpp cannot run is
refused in one line."""
import json, sys
from pathlib import Path
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("gguf")
pytestmark = pytest.mark.slow  # llama.cpp's converter runs in its own Python process
from typer.testing import CliRunner
from finetune_kit.cli import app
from finetune_kit.deploy import GGUF_TOLERANCES, LLAMA_CPP_TOLERANCES, export_gguf
from finetune_kit.models import end_of_turn_id, load_model
from helpers import tiny_adapter, tiny_config

runner = CliRunner()
PROMPTS = ["Classify: the market rallied and shares rose", "Classify: the striker scored twice",
           "Summarize: rain is expected on Monday", "Name a colour."]

@pytest.fixture(scope="module")
def lora(tmp_path_factory):
    "A LoRA adapter on the tiny model with B about the size training gives it (0.05; helpers' 0.3 is random noise)."
    from finetune_kit.adapters import apply_peft, save_adapter
    cfg = tiny_config(dtype="float32", peft_method="lora", lora_r=8)
    m, tok = load_model(cfg, progress=False)
    torch.manual_seed(3)  # lora_A's initialisation: the same adapter whatever ran before
    pm = apply_peft(m, cfg)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if "lora_B" in n: p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return save_adapter(pm, tmp_path_factory.mktemp("gguf")/"lora", tok)

def _answers_and_logits(model, tok, n_new=12):
    "Greedy answers (ids) and last-prompt-position logits of `model` on PROMPTS, stopping at end of turn."
    stops = sorted({end_of_turn_id(tok), tok.eos_token_id})
    out = []
    for p in PROMPTS:
        ids = tok(tok.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True, tokenize=False),
                  add_special_tokens=False, return_tensors="pt")["input_ids"]
        with torch.inference_mode():
            g = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=n_new,
                               do_sample=False, eos_token_id=stops, pad_token_id=stops[0])
            logits = model(input_ids=g).logits[0].float()
        out.append((g[0, ids.shape[1]:].tolist(), logits))
    return out

def test_gguf_round_trip_f16_answers_like_the_adapter(lora, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig
    out = tmp_path/"gguf"
    r = runner.invoke(app, ["export", str(lora), "--out", str(out), "--format", "gguf", "--no-progress"])
    assert r.exit_code == 0, r.output
    assert "tolerance 0.01 for f16" in r.output and r.output.endswith(f"wrote {out}\n"), r.output
    assert sorted(p.name for p in out.iterdir()) == ["Modelfile", "export.json", "model-f16.gguf"]
    rep = json.loads((out/"export.json").read_text())
    assert rep["ok"] and rep["quant"] == "f16" and rep["rel_diff"] <= rep["tolerance"] == GGUF_TOLERANCES["f16"]
    assert rep["greedy_agree"] == rep["probes"] and not rep["near_ties"] and rep["prompt_ids_differ"] == []
    assert rep["chat_template_stored"] and rep["end_of_turn"]["ok"] and rep["pre_tokenizer_fallback"]
    assert rep["weights"]["ok"] and 0 < rep["weights"]["worst"] <= 1  # each weight rounded to f16, and only that
    # the same, checked here without the export's own code: the file as a user loads it against base + adapter
    base, tok = load_model(tiny_config(dtype="float32"), progress=False)
    want = _answers_and_logits(PeftModel.from_pretrained(base, str(lora)).eval(), tok)
    back = AutoModelForCausalLM.from_pretrained(out, gguf_file="model-f16.gguf", dtype=torch.float32,
                                                quantization_config=GgufConfig(dequantize=True)).eval()
    got = _answers_and_logits(back, AutoTokenizer.from_pretrained(out, gguf_file="model-f16.gguf"))
    assert [a for a, _ in got] == [a for a, _ in want]  # greedy answers equal
    assert sum(len(a) for a, _ in want) > len(PROMPTS)  # and they are answers, not all an immediate stop
    scale = max(float(l.abs().max()) for _, l in want)
    worst = max(float((g - w).abs().max()) for (_, g), (_, w) in zip(got, want))
    assert worst <= GGUF_TOLERANCES["f16"] * scale, (worst, scale)
    mf = (out/"Modelfile").read_text()
    assert "FROM ./model-f16.gguf\n" in mf and 'PARAMETER stop "<|im_end|>"' in mf
    assert 'TEMPLATE """{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}' in mf

def test_gguf_q8_0_is_smaller_and_within_its_tolerance(lora, tmp_path):
    f16 = export_gguf(lora, tmp_path/"f16", quant="f16", progress=False).report
    q8 = export_gguf(lora, tmp_path/"q8", quant="q8_0", progress=False).report
    assert q8["ok"] and q8["bytes"] < 0.7 * f16["bytes"]
    assert f16["rel_diff"] < q8["rel_diff"] <= GGUF_TOLERANCES["q8_0"]  # 8-bit blocks round more than f16 does

def test_a_corrupted_merge_fails_the_gguf_check_and_leaves_nothing(lora, tmp_path, monkeypatch):
    import finetune_kit.adapters as M
    good = M.merge_adapter
    def scale_twice(model):
        for m in model.modules():
            if isinstance(getattr(m, "scaling", None), dict): m.scaling = {k: 2 * v for k, v in m.scaling.items()}
        return good(model)
    monkeypatch.setattr(M, "merge_adapter", scale_twice)
    out = tmp_path/"exports"/"gguf"
    r = runner.invoke(app, ["export", str(lora), "--out", str(out), "--format", "gguf", "--no-progress"])
    assert r.exit_code == 2 and r.output.count("\n") == 1, r.output
    assert r.output.startswith("error: export check failed: the GGUF's logits differ"), r.output
    assert not out.exists() and list(out.parent.iterdir()) == []

@pytest.mark.parametrize("method", ["prompt_tuning", "prefix_tuning"])
def test_a_method_llama_cpp_cannot_run_is_one_line(method, tmp_path):
    ad = tiny_adapter(tmp_path/method, method=method)
    r = runner.invoke(app, ["export", str(ad), "--out", str(tmp_path/"x"), "--format", "gguf", "--no-progress"])
    assert (r.exit_code, r.output.count("\n")) == (2, 1), r.output
    assert r.output.startswith(f"error: {method} cannot be exported to GGUF"), r.output
    assert not (tmp_path/"x").exists()

def test_a_tensor_mapped_to_the_wrong_place_fails_the_weight_check(lora, tmp_path, monkeypatch):
    import finetune_kit.deploy.gguf as G
    from safetensors.torch import load_file, save_file
    real = G.convert_to_gguf
    def swapping(hf_dir, out_file, quant="f16", name=None):  # a converter bug: layer 0's query and layer 1's swapped
        f = Path(hf_dir)/"model.safetensors"
        sd = load_file(f)
        a, b = "model.layers.0.self_attn.q_proj.weight", "model.layers.1.self_attn.q_proj.weight"
        sd[a], sd[b] = sd[b], sd[a]
        save_file(sd, f, metadata={"format": "pt"})
        return real(hf_dir, out_file, quant, name)
    monkeypatch.setattr(G, "convert_to_gguf", swapping)
    with pytest.raises(G.ExportError, match="the GGUF's weights are not the merged model's rounded to f16") as e:
        export_gguf(lora, tmp_path/"x", progress=False)
    assert e.value.report["weights"]["worst"] > 100 and "q_proj" in e.value.report["weights"]["tensor"]
    assert not (tmp_path/"x").exists()

def test_llama_cpp_runs_the_file_and_answers_like_the_adapter(lora, tmp_path):
    llama_cpp = pytest.importorskip("llama_cpp")
    from peft import PeftModel
    out = tmp_path/"gguf"
    rep = export_gguf(lora, out, progress=False).report["llama_cpp"]
    assert rep["ok"] and rep["loads"] and rep["version"] == llama_cpp.__version__
    assert rep["prompt_ids_differ"] == [] and rep["answers_equal"] == rep["probes"] and not rep["answer_near_ties"]
    assert 0 < rep["rel_diff"] <= rep["tolerance"] == LLAMA_CPP_TOLERANCES["f16"]
    # the same, checked here without the export's own code: llama.cpp's chat path as Ollama takes it (the template
    # stored in the file, its tokenizer, its stop token) against base + adapter's greedy answers
    base, tok = load_model(tiny_config(dtype="float32"), progress=False)
    want = _answers_and_logits(PeftModel.from_pretrained(base, str(lora)).eval(), tok)
    llm = llama_cpp.Llama(model_path=str(out/"model-f16.gguf"), n_ctx=256, verbose=False)
    got = [llm.create_chat_completion([{"role": "user", "content": p}], temperature=0.0, top_k=1, repeat_penalty=1.0,
                                      max_tokens=12)["choices"][0]["message"]["content"] for p in PROMPTS]
    llm.close()
    # a random model's top two logits are often within the kernels' rounding of each other: as the export's check does,
    # a different pick counts only where the reference's own margin is wider than twice the tolerance; up to the first
    # near tie the answers must be equal, and entirely where there is none. The random model also answers bytes that
    # are no UTF-8: transformers decodes them as U+FFFD, llama.cpp drops them.
    scale = max(float(l.abs().max()) for _, l in want)
    whole = compared = 0
    for text, (ids, logits) in zip(got, want):
        top2 = logits[-len(ids) - 1:-1].topk(2, dim=-1).values if ids else logits[:0, :2]
        near = [k for k, (a, b) in enumerate(top2.tolist()) if a - b <= 2 * LLAMA_CPP_TOLERANCES["f16"] * scale]
        sure = tok.decode(ids[:near[0]] if near else ids, skip_special_tokens=True).replace("\ufffd", "")
        assert text == sure if not near else text.startswith(sure), (text, sure, near)
        whole, compared = whole + (not near), compared + (near[0] if near else len(ids))
    assert whole >= 1 and compared >= 12 and sum(map(len, got)) > 10  # a dozen tokens or more compared, and text

def test_a_file_llama_cpp_cannot_load_fails_the_export_in_one_line(lora, tmp_path, monkeypatch):
    pytest.importorskip("llama_cpp")
    import finetune_kit.deploy.gguf as G
    # the converter fallback's first name for GPT-2's pre-tokenizer: transformers reads such a file, llama.cpp refuses it
    assert 'return "gpt-2"' in G._DRIVER
    monkeypatch.setattr(G, "_DRIVER", G._DRIVER.replace('return "gpt-2"', 'return "gpt2"'))
    out = tmp_path/"exports"/"gguf"
    r = runner.invoke(app, ["export", str(lora), "--out", str(out), "--format", "gguf", "--no-progress"])
    assert r.exit_code == 2 and r.output.count("\n") == 1, r.output
    assert r.output.startswith("error: export check failed in llama.cpp (llama-cpp-python ") and \
        "it cannot load the file" in r.output, r.output
    assert not out.exists() and list(out.parent.iterdir()) == []

def test_without_the_binding_the_export_says_it_skipped_llama_cpp(lora, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # `import llama_cpp` raises ImportError
    rep = export_gguf(lora, tmp_path/"gguf", progress=False).report
    assert rep["ok"] and "llama-cpp-python is not installed" in rep["llama_cpp"]["skipped"]

def test_a_k_quant_is_made_by_llama_cpps_quantizer_and_checked(lora, tmp_path):
    "--quant q4_k_m: the converter's f32 file quantized by llama.cpp's own quantizer; smaller than q8_0, its weights and logits within the k-quant bounds, and llama.cpp runs it."
    pytest.importorskip("llama_cpp")
    from finetune_kit.deploy.gguf import K_QUANT_WEIGHT_BOUND
    out = tmp_path/"q4"
    r = runner.invoke(app, ["export", str(lora), "--out", str(out), "--format", "gguf", "--quant", "Q4_K_M", "--no-progress"])
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in out.iterdir()) == ["Modelfile", "export.json", "model-q4_k_m.gguf"]  # no f32 left
    rep = json.loads((out/"export.json").read_text())
    assert rep["ok"] and rep["quant"] == "q4_k_m" and rep["quantizer"].startswith("llama_model_quantize")
    assert 0 < rep["weights"]["worst"] <= 1 and rep["rel_diff"] <= GGUF_TOLERANCES["q4_k_m"]
    assert rep["llama_cpp"]["loads"] and rep["llama_cpp"]["rel_diff"] <= LLAMA_CPP_TOLERANCES["q4_k_m"]
    q8 = export_gguf(lora, tmp_path/"q8", quant="q8_0", progress=False).report
    assert rep["bytes"] < q8["bytes"] and rep["weights"]["worst"] * K_QUANT_WEIGHT_BOUND > 0  # 4-bit rounds: not a copy

def test_a_k_quant_without_the_binding_is_one_line(lora, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "llama_cpp", None)
    r = runner.invoke(app, ["export", str(lora), "--out", str(tmp_path/"x"), "--format", "gguf", "--quant", "q4_k_m"])
    assert (r.exit_code, r.output.count("\n")) == (2, 1), r.output
    assert "pip install 'finetune-kit[llamacpp]'" in r.output and not (tmp_path/"x").exists()
