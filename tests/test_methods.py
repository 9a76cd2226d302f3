"""The method registry: the built-in specs agree with PEFT, and a method added by one `register_method` call trains,
saves, merges, serves and is refused by vLLM as its spec says, with no edit anywhere else."""
import dataclasses, json
import pytest, torch
from finetune_kit.methods import MERGEABLE, METHODS, MethodSpec, ModelError, get_method, method_of, register_method
from finetune_kit.config import ConfigError, param_specs
from finetune_kit.settings import make_config
from finetune_kit.files import KitError

def loha_config(p, targets, total_steps=None, model_type=None):
    "PEFT's LoHa (low-rank Hadamard product) from the run config's `peft` section."
    from peft import LoHaConfig
    return LoHaConfig(task_type="CAUSAL_LM", r=p.lora_r, alpha=p.lora_alpha, target_modules=targets)

LOHA = MethodSpec("loha", loha_config, 2e-3, title="LoHa", peft_type="LOHA")  # the one cell a new method takes

@pytest.fixture
def loha():
    "LoHa registered for one test (the registry is the package's, so it is removed again after)."
    register_method(LOHA)
    yield LOHA
    METHODS.pop("loha", None)

def test_the_built_in_methods_agree_with_peft():
    from finetune_kit.config import AdapterConfig
    assert list(METHODS) == ["lora", "qlora", "dora", "adalora", "prompt_tuning", "prefix_tuning", "ia3", "full"]
    for name, s in METHODS.items():
        pc = None if s.full else s.build(AdapterConfig(), ["q_proj", "down_proj"], 100, "llama")
        assert s.prompt_learning == bool(pc is not None and pc.is_prompt_learning), name
        assert s.full == (name == "full") and (s.peft_type is None) == s.full, name
        if pc is not None: assert method_of(pc.to_dict()) == ("lora" if name == "qlora" else name)
    assert [m for m in METHODS if m not in MERGEABLE] == ["prompt_tuning", "prefix_tuning"]
    with pytest.raises(ModelError, match="unknown peft_method 'loha'; choose one of lora, qlora"): get_method("loha")
    with pytest.raises(ConfigError, match="'peft_method' must be one of lora, qlora, dora"):
        make_config(peft_method="loha")
    with pytest.raises(KitError, match="already registered"): register_method(get_method("lora"))

def test_a_registered_method_is_a_parameter_value_and_trains(loha, tmp_path):
    "After one `register_method` call the run config takes `loha`, `train` runs it at its spec's learning rate."
    from finetune_kit.train import hardware_args, train, training_args, uses_compact_loss
    assert "loha" in param_specs()["peft_method"].choices and "loha" in MERGEABLE
    cfg = make_config({"base_model": "tiny-test", "peft_method": "loha", "source": "bbc", "max_records": 40,
                       "max_chars": 120, "max_steps": 2, "save_steps": 100, "logging_steps": 1, "report_to": "none",
                       "runs_dir": str(tmp_path)}, settings=False)
    assert training_args(cfg, tmp_path/"ck").learning_rate == 2e-3
    hw = hardware_args(cfg, caps=(True, True, 9))
    assert (hw["activation_checkpointing"], hw["optim"]) == (False, "adamw_torch_fused")
    assert uses_compact_loss("loha", cuda=False) is True
    res = train(cfg)
    assert res.summary["steps"] == 2 and res.summary["train_loss"] > 0 and res.summary["trainable"] > 0
    ac = json.loads((res.adapter_dir/"adapter_config.json").read_text())
    assert ac["peft_type"] == "LOHA" and (res.adapter_dir/"adapter_model.safetensors").is_file()

def _saved_loha(folder):
    "A LoHa adapter on the tiny model, moved off its no-op init, saved with its tokenizer; the model and a batch."
    from finetune_kit.models import load_model
    from finetune_kit.adapters import apply_peft, save_adapter
    cfg = make_config(base_model="tiny-test", peft_method="loha", dtype="float32", settings=False)
    model, tok = load_model(cfg)
    pm = apply_peft(model, cfg)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in pm.parameters():
            if p.requires_grad: p.add_(0.05*torch.randn(p.shape, generator=g))
    pm.eval()
    batch = dict(tok(["Classify: the team won.", "hi"], return_tensors="pt", padding=True))
    return save_adapter(pm, folder, tok), pm, batch

def test_a_registered_method_is_served_merged_and_refused_as_its_spec_says(loha, tmp_path):
    from finetune_kit.adapters import adapter_source, check_adapters, merge_adapter, vllm_problems
    from finetune_kit.deploy import Engine, export_model, load_adapters
    from finetune_kit.deploy.export import ExportError
    from finetune_kit.evaluate.generate import EvalError
    from finetune_kit.evaluate.vllm import vllm_plan
    folder, pm, batch = _saved_loha(tmp_path/"loha")
    assert adapter_source(folder).peft_method == "loha"
    info = check_adapters("tiny-test", {"h": folder})["h"]
    assert info.method == "loha" and info.peft_type == "LOHA"
    # vLLM: not LoRA, so refused, naming the method (spec: vllm=False)
    assert vllm_problems(info) == ["'h' is LoHa (peft_method loha), which vLLM does not serve: it serves LoRA adapters "
                                   "only; export a merged model (finetune-kit export) and serve that instead"]
    with pytest.raises(EvalError, match="backend vllm: vLLM would refuse: 'tuned' is LoHa"):
        vllm_plan(make_config(base_model="tiny-test", settings=False), folder)
    # the kit's server takes it, one adapter per batch (spec: mixable=False)
    model, tok, infos, stops = load_adapters("tiny-test", {"h": folder}, {"dtype": "float32"}, progress=False)
    assert list(infos) == ["h"] and Engine(model, tok, infos, stops, "tiny-test").mixed is False
    # merged into the base with the same logits (spec: mergeable=True)
    with torch.no_grad(): before = pm(**batch).logits
    with torch.no_grad(): diff = (merge_adapter(pm)(**batch).logits - before).abs().max().item()
    assert diff < 1e-4
    # the same adapter under a spec that says it cannot merge: merge and export refuse, and nothing is written
    register_method(dataclasses.replace(LOHA, mergeable=False), replace=True)
    _, pm2, _ = _saved_loha(tmp_path/"loha2")
    with pytest.raises(ModelError, match="loha cannot be merged: its spec says so"): merge_adapter(pm2)
    with pytest.raises(ExportError, match="loha cannot be merged"): export_model(folder, tmp_path/"out", progress=False)
    assert not (tmp_path/"out").exists()
