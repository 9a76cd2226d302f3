"The `backend` parameter of evaluation: vLLM's requests built as the transformers loop's, checked on a CPU with a stand-in engine."
import dataclasses, importlib.util, json, sys, types
from pathlib import Path
import pytest
from typer.testing import CliRunner
from helpers import CLS, ROOT, tiny_adapter, tiny_config
from finetune_kit.cli import app
from finetune_kit.config import ConfigError, param_specs
from finetune_kit.settings import make_config
from finetune_kit.engine import generate, greedy_config
from finetune_kit.evaluate import EvalError, evaluate, read_jsonl
from finetune_kit.evaluate.generate import rank_labels
from finetune_kit.evaluate.run import generate_systems
import finetune_kit.evaluate.vllm as V

LABELS = ["business", "sport", "tech"]
runner = CliRunner()

pytestmark = pytest.mark.usefixtures("one_torch_thread")
EVAL = {"max_new_tokens": 5, "bootstrap_samples": 50, "review_samples": 0, "dtype": "float32"}

vllm_here = V.vllm_missing() is None

# ---- the parameter and the one-line error

def test_backend_is_a_run_config_parameter_with_choices():
    sp = param_specs()["backend"]
    assert (sp.section, sp.default, tuple(sp.choices)) == ("eval", "transformers", ("transformers", "vllm")) and sp.help
    with pytest.raises(ConfigError, match="'backend' must be one of transformers, vllm"): make_config(settings=False, backend="onnx")
    r = runner.invoke(app, ["evaluate", "run", "--help"], terminal_width=200)
    assert "backend [transformers|vllm]" in r.output

@pytest.mark.skipif(vllm_here, reason="vllm and CUDA are here")
def test_cli_backend_vllm_where_it_cannot_run_is_one_line_naming_the_parameter(tmp_path):
    r = runner.invoke(app, ["evaluate", "run", str(CLS), "-p", "backend", "vllm", "-p", "base_model", "tiny-test", "-p", "report_to", "none",
                            "-p", "runs_dir", str(tmp_path/"runs"), "--no-progress"])
    errs = [l for l in r.output.splitlines() if l.startswith("error: ")]
    assert r.exit_code == 2 and len(errs) == 1 and "Traceback" not in r.output, r.output
    assert errs[0].startswith("error: backend vllm: ") and "backend transformers" in errs[0], errs[0]
    assert not (tmp_path/"runs").exists()  # refused before a run folder is made

def test_backend_vllm_installed_but_no_cuda_is_an_eval_error(monkeypatch, tmp_path):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object() if name == "vllm" else real(name, *a))
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    with pytest.raises(EvalError, match=r"^backend vllm: no CUDA device here"):
        evaluate(tiny_config(EVAL, backend="vllm"), data=CLS, out_dir=tmp_path/"eval", progress=False)
    assert not (tmp_path/"eval").exists()

# ---- requests: the transformers loop's prompt tokens, LoRA on the tuned system only, greedy sampling

def test_generation_requests_carry_the_token_ids_the_transformers_loop_feeds_the_model(tmp_path):
    "The ids the transformers loop puts through the model's first forward for each record are the vLLM prompt's ids."
    from finetune_kit.models import load_model
    model, tok = load_model(tiny_config(EVAL), progress=False)
    recs = read_jsonl(CLS/"test.jsonl")
    fed = []
    h = model.register_forward_pre_hook(lambda m, a, kw: fed.append(kw["input_ids"][0].tolist()) if kw.get("position_ids") is not None
                                        and kw["position_ids"][0, 0] == 0 else None, with_kwargs=True)
    try: generate(model, tok, recs, batch_size=1, max_new_tokens=2, prefix_cache=False, progress=False)
    finally: h.remove()
    reqs = V.generation_requests(tok, recs, {"base": None})
    assert sorted(r.prompt_token_ids for r in reqs) == sorted(fed) and len(fed) == len(recs)
    assert [r.index for r in reqs] == list(range(len(recs)))

def test_which_systems_get_a_lora_request(tmp_path):
    cfg, ad = tiny_config(EVAL, backend="vllm"), tiny_adapter(tmp_path/"ad")
    (plan,) = V.vllm_plan(cfg, ad)
    assert plan.systems == {"base": None, "tuned": str(ad)} and plan.max_lora_rank == 8
    from finetune_kit.models import load_tokenizer
    tok = load_tokenizer(cfg)
    recs = read_jsonl(CLS/"test.jsonl")[:3]
    for build in (lambda s: V.generation_requests(tok, recs, s), lambda s: V.ranking_requests(tok, recs, LABELS, s, [tok.eos_token_id]),
                  lambda s: V.perplexity_requests(tok, recs, s)):
        reqs = build(plan.systems)
        assert {r.lora for r in reqs if r.system == "base"} == {None}
        assert {r.lora for r in reqs if r.system == "tuned"} == {("tuned", 1, str(ad))}
        base, tuned = ([r.prompt_token_ids for r in reqs if r.system == s] for s in ("base", "tuned"))
        assert base == tuned  # the same tokens for both systems
    # base only: one engine, no LoRA; a full fine-tuning folder: its own engine, no LoRA
    assert [(p.systems, p.max_lora_rank) for p in V.vllm_plan(cfg)] == [({"base": None}, None)]
    from finetune_kit.testing import make_tiny_model
    full = make_tiny_model(tmp_path/"full", seed=1)
    plans = V.vllm_plan(cfg, full)
    assert [(Path(p.model).name, p.systems, p.max_lora_rank) for p in plans] == [
        (Path(plans[0].model).name, {"base": None}, None), ("full", {"tuned": None}, None)]
    # adapters vLLM would refuse, named before a GPU is booked
    with pytest.raises(EvalError, match="backend vllm: vLLM would refuse: 'tuned' is DoRA"): V.vllm_plan(cfg, tiny_adapter(tmp_path/"dora", method="dora"))
    with pytest.raises(EvalError, match="backend vllm: .*prompt_tuning"): V.vllm_plan(cfg, tiny_adapter(tmp_path/"pt", method="prompt_tuning"))

def test_sampling_args_are_the_greedy_config_of_the_transformers_loop():
    from finetune_kit.models import load_model
    cfg = tiny_config(EVAL)
    model, tok = load_model(cfg, progress=False)
    gc = greedy_config(model, tok, cfg.eval.max_new_tokens)
    sp = V.sampling_args(cfg.eval.max_new_tokens, gc.eos_token_id)
    assert sp == {"temperature": 0.0, "max_tokens": 5, "stop_token_ids": gc.eos_token_id, "skip_special_tokens": True}
    assert V.SCORING_ARGS == {"temperature": 0.0, "max_tokens": 1, "prompt_logprobs": 1}

# ---- the whole backend against a stand-in engine (the transformers model behind vLLM's API)

class _Logprob:
    def __init__(self, v): self.logprob = v

class FakeLLM:
    "vLLM's `LLM` as `vllm_systems` uses it, computed by the transformers model: greedy answers and prompt logprobs."
    made = []
    def __init__(self, model, tokenizer, dtype, seed, trust_remote_code, enable_lora=False, max_loras=None, max_lora_rank=None):
        from transformers import AutoModelForCausalLM, AutoTokenizer
        self.model = AutoModelForCausalLM.from_pretrained(model, dtype="float32").eval()
        self.tok, self.enable_lora, self.peft = AutoTokenizer.from_pretrained(tokenizer), enable_lora, {}
        FakeLLM.made.append(dict(model=model, enable_lora=enable_lora, max_lora_rank=max_lora_rank, requests=[]))
    def _model(self, lora):
        if lora is None: return self.model
        assert self.enable_lora
        from peft import PeftModel
        if lora.lora_path not in self.peft:
            import copy
            self.peft[lora.lora_path] = PeftModel.from_pretrained(copy.deepcopy(self.model), lora.lora_path).eval()
        return self.peft[lora.lora_path]
    def generate(self, prompts, sp, lora_request=None, use_tqdm=True):
        import torch
        m, out = self._model(lora_request), []
        FakeLLM.made[-1]["requests"].append((len(prompts), lora_request and lora_request.lora_name, dict(vars(sp))))
        for p in prompts:
            ids = list(p["prompt_token_ids"])
            with torch.no_grad():
                if sp.prompt_logprobs is not None:
                    lp = torch.log_softmax(m(input_ids=torch.tensor([ids])).logits[0].float(), -1)
                    out.append(types.SimpleNamespace(prompt_logprobs=[None] + [{t: _Logprob(lp[k - 1, t].item())} for k, t in enumerate(ids) if k],
                                                     outputs=[types.SimpleNamespace(text="")]))
                    continue
                new = []
                for _ in range(sp.max_tokens):
                    t = int(m(input_ids=torch.tensor([ids + new])).logits[0, -1].argmax())
                    new.append(t)
                    if t in sp.stop_token_ids: break
            text = self.tok.decode(new, skip_special_tokens=sp.skip_special_tokens)
            out.append(types.SimpleNamespace(outputs=[types.SimpleNamespace(text=text)], prompt_logprobs=None))
        return out

def install_fake_vllm(monkeypatch):
    "A `vllm` module whose `LLM` is `FakeLLM`, and vLLM counted as runnable here."
    mod, lora = types.ModuleType("vllm"), types.ModuleType("vllm.lora.request")
    mod.LLM, mod.SamplingParams = FakeLLM, lambda **kw: types.SimpleNamespace(**{"prompt_logprobs": None, **kw})
    lora.LoRARequest = lambda name, i, path: types.SimpleNamespace(lora_name=name, lora_int_id=i, lora_path=path)
    for name, m in (("vllm", mod), ("vllm.lora", types.ModuleType("vllm.lora")), ("vllm.lora.request", lora)):
        monkeypatch.setitem(sys.modules, name, m)
    monkeypatch.setattr(V, "vllm_missing", lambda **kw: None)
    FakeLLM.made = []
    return FakeLLM

@pytest.fixture
def fake_vllm(monkeypatch): return install_fake_vllm(monkeypatch)

def test_vllm_backend_answers_as_the_transformers_backend_with_one_engine_for_base_and_lora(tmp_path, fake_vllm):
    recs, ad = read_jsonl(CLS/"test.jsonl"), tiny_adapter(tmp_path/"ad")
    cfg_t = tiny_config(EVAL, decode="both")
    want, wppl, _, _ = generate_systems(cfg_t, recs, ad, progress=False, labels=LABELS)
    got, ppl, notes, timing = generate_systems(dataclasses.replace(cfg_t, eval=dataclasses.replace(cfg_t.eval, backend="vllm")),
                                               recs, ad, progress=False, labels=LABELS)
    assert want["base"] != want["tuned"]  # the adapter matters, so a missing LoRA request would show
    for k in ("base", "tuned", "base_rank", "tuned_rank"): assert got[k] == want[k], k
    assert ppl == pytest.approx(wppl, rel=1e-4) and set(timing) == {"base", "tuned", "base_rank", "tuned_rank"}
    (eng,) = fake_vllm.made  # one engine, LoRA on, the adapter's rank
    assert (eng["enable_lora"], eng["max_lora_rank"]) == (True, 8)
    assert [(n, lora) for n, lora, _ in eng["requests"]] == [(len(recs), None), (3*len(recs), None), (len(recs), None),
                                                              (len(recs), "tuned"), (3*len(recs), "tuned"), (len(recs), "tuned")]
    assert "one engine" in notes[0]

def test_vllm_backend_full_fine_tuning_loads_the_tuned_folder_as_its_own_model(tmp_path, fake_vllm):
    from finetune_kit.testing import make_tiny_model
    recs, full = read_jsonl(CLS/"test.jsonl")[:4], make_tiny_model(tmp_path/"full", seed=1)
    cfg = tiny_config(EVAL, backend="vllm")
    got, ppl, notes, _ = generate_systems(cfg, recs, full, progress=False)
    want, wppl, _, _ = generate_systems(tiny_config(EVAL), recs, full, progress=False)
    assert (got["base"], got["tuned"]) == (want["base"], want["tuned"]) and ppl == pytest.approx(wppl, rel=1e-4)
    assert [(Path(e["model"]).name, e["enable_lora"]) for e in fake_vllm.made][1:] == [("full", False)] and len(fake_vllm.made) == 2

def test_vllm_backend_refuses_a_loaded_model(fake_vllm):
    from finetune_kit.models import load_model
    model, tok = load_model(tiny_config(EVAL), progress=False)
    with pytest.raises(EvalError, match="backend vllm loads its own engine"):
        generate_systems(tiny_config(EVAL, backend="vllm"), read_jsonl(CLS/"test.jsonl")[:2], model=model, tokenizer=tok)

def test_gpu_smoke_vllm_check_runs_against_the_stand_in_engine(tmp_path, monkeypatch):
    "scripts/gpu_smoke.py's vllm check, end to end on the tiny model (a real GPU runs it with vLLM itself)."
    import argparse, importlib.util as iu
    import finetune_kit.train, trl.trainer.sft_trainer  # TRL looks for vllm when imported: before the stand-in
    install_fake_vllm(monkeypatch)
    spec = iu.spec_from_file_location("gpu_smoke", ROOT/"scripts/gpu_smoke.py")
    smoke = iu.module_from_spec(spec); spec.loader.exec_module(smoke)
    a = argparse.Namespace(model="tiny-test", steps=2, batch=4, records=120, eval_records=6)
    status, line = smoke.check_vllm(a, tmp_path)
    assert status == "PASS" and "6 records, base + LoRA on one engine" in line and "answers agree base 100%, tuned 100%" in line, line
