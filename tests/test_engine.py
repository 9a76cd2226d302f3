"The generation engine: one token-by-token loop in the package; rows that join a running batch or are cancelled."
import ast
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT/"finetune_kit"

def _drives_a_model(node) -> bool:
    "A call of a model forward with `use_cache` (`model(...)`, `self.model(...)`), or a decoding batch's `.step()`."
    if not isinstance(node, ast.Call): return False
    f = node.func
    name = f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else None
    if name == "model" and any(k.arg == "use_cache" for k in node.keywords): return True
    return isinstance(f, ast.Attribute) and f.attr == "step" and not node.args and not node.keywords

def decoding_loops(pkg:Path=PKG) -> list[str]:
    "`file:function` of every `for`/`while` loop in the package whose body drives a model with its KV cache, step by step."
    out = []
    for path in sorted(pkg.rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        for fn in ast.walk(tree):
            if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)): continue
            for loop in ast.walk(fn):
                if isinstance(loop, (ast.For, ast.While)) and any(_drives_a_model(n) for s in loop.body for n in ast.walk(s)):
                    out.append(f"{path.relative_to(pkg.parent)}:{fn.name}")
    return sorted(set(out))

def test_the_package_has_one_token_by_token_loop():
    "Evaluation, synthetic data and the server all decode through `engine.Batch.run`: no other loop feeds a model its cache."
    assert decoding_loops() == ["finetune_kit/engine.py:run"]

def test_the_loop_check_can_fail(tmp_path):
    "A second loop, in either form the package once had (a cached forward or a batch stepped in a loop), is found."
    pkg = tmp_path/"finetune_kit"
    pkg.mkdir()
    (pkg/"a.py").write_text("def greedy(model, x, c):\n    for _ in range(9):\n        x = model(input_ids=x, cache=c, use_cache=True)\n")
    (pkg/"b.py").write_text("class S:\n    def serve(self, b):\n        while b:\n            b.step()\n")
    (pkg/"c.py").write_text("def once(model, x):\n    return model(input_ids=x, use_cache=True)\n")  # no loop: not one
    assert decoding_loops(pkg) == ["finetune_kit/a.py:greedy", "finetune_kit/b.py:serve"]

@pytest.fixture(scope="module", params=["torch", "packed"])
def lora(request):
    "The tiny model under a random LoRA (the bare tiny model answers every prompt alike), its tokenizer and prompts; with torch's kernels, and with the base's linear layers packed as `load_model` leaves them on a CPU."
    import torch
    from peft import LoraConfig, get_peft_model
    from finetune_kit.engine import prompt_ids
    from finetune_kit.files import read_jsonl
    from finetune_kit.packed import pack_linears
    from finetune_kit.testing import load_tiny
    model, tok = load_tiny()
    torch.manual_seed(0)
    model = get_peft_model(model, LoraConfig(r=8, target_modules="all-linear", init_lora_weights=False))
    if request.param == "packed": assert pack_linears(model)["used"] == "packed"
    return model, tok, prompt_ids(tok, read_jsonl(ROOT/"tests/fixtures/evaluate/cls/test.jsonl"))

def _alone(model, tok, req):
    from finetune_kit.engine import Batch, decoding, eos_ids
    with decoding(model):
        b = Batch(model, tok, eos_ids(model, tok))
        row = b.add([req])[0]
        b.run()
    return row.tokens

def test_rows_that_join_a_running_batch_answer_as_alone(lora):
    "What continuous batching needs: rows added between steps decode with the others and get their own answers."
    from finetune_kit.engine import Batch, Request, decoding, eos_ids
    model, tok, ids = lora
    with decoding(model):
        b = Batch(model, tok, eos_ids(model, tok))
        rows = b.add([Request(i, max_tokens=8) for i in ids[:3]])
        b.step()
        rows += b.add([Request(ids[3], max_tokens=8)])
        b.step(); b.step()
        rows += b.add([Request(i, max_tokens=5) for i in ids[4:6]])
        assert len(b) == 6
        b.run()
    assert len(b) == 0 and [r.reason for r in rows] == ["length"] * 6
    assert [r.tokens for r in rows] == [_alone(model, tok, Request(i, max_tokens=n)) for i, n in zip(ids[:6], [8]*4 + [5]*2)]

def test_a_cancelled_row_leaves_the_batch_and_the_others_go_on(lora):
    from finetune_kit.engine import Batch, Request, decoding, eos_ids
    model, tok, ids = lora
    events = []
    def emit(ev):
        events.append(ev)
        if len(events) == 2: reqs[0].cancelled = True
    reqs = [Request(ids[0], max_tokens=8, emit=emit), Request(ids[1], max_tokens=8)]
    with decoding(model):
        b = Batch(model, tok, eos_ids(model, tok))
        rows = b.add(reqs)
        sizes = [len(b)]
        while b: b.step(); sizes.append(len(b))
    assert rows[0].reason is None and len(rows[0].tokens) < 8 and not any(e["type"] == "done" for e in events)
    assert sizes[0] == 2 and 1 in sizes and rows[1].tokens == _alone(model, tok, Request(ids[1], max_tokens=8))

def test_a_mixed_batch_runs_one_adapter_active_and_several_stacked():
    "Rows that all name one adapter run it as the active adapter (as evaluation does); rows of several run the stacked products (`row_adapters`) until one adapter is left; a LoRA bias keeps PEFT's per-row path. Every row answers as it does alone."
    import torch
    from peft import LoraConfig, get_peft_model
    from finetune_kit.engine import Batch, Request, decoding, eos_ids, prompt_ids
    from finetune_kit.files import read_jsonl
    from finetune_kit.row_adapters import row_adapters
    from finetune_kit.testing import load_tiny
    ids = prompt_ids(load_tiny()[1], read_jsonl(ROOT/"tests/fixtures/evaluate/cls/test.jsonl"))[:3]
    def adapted(**kw):
        model, tok = load_tiny()
        torch.manual_seed(1)
        model = get_peft_model(model, LoraConfig(r=8, target_modules="all-linear", init_lora_weights=False, **kw),
                               adapter_name="news")
        model.add_adapter("sport", LoraConfig(r=4, lora_alpha=16, target_modules="all-linear", init_lora_weights=False, **kw))
        return model, tok
    def run(model, tok, adapters, budgets=(6, 6, 6)):
        seen = []
        def mode(m, a, kw):
            rows = row_adapters(model)
            seen.append("peft" if kw.get("adapter_names") else "stacked" if rows and rows.rows else model.active_adapter)
        hook = model.register_forward_pre_hook(mode, with_kwargs=True)
        with decoding(model):
            b = Batch(model, tok, eos_ids(model, tok), mixed=True)
            rows = b.add([Request(i, a, n) for i, a, n in zip(ids, adapters, budgets)])
            b.run()
        hook.remove()
        return [r.tokens for r in rows], seen
    def alone(model, tok, i, name, n=6):
        with decoding(model):
            if name is None:
                with model.disable_adapter(): return _alone(model, tok, Request(i, max_tokens=n))
            model.set_adapter(name)
            return _alone(model, tok, Request(i, max_tokens=n))
    model, tok = adapted()
    model.set_adapter("news")
    one, seen = run(model, tok, ["sport"] * 3)
    assert set(seen) == {"sport"}  # made active
    assert one == [alone(model, tok, i, "sport") for i in ids]
    three, seen = run(model, tok, ["news", "sport", None], (2, 6, 2))
    assert seen[0] == "stacked" and seen[-1] == "sport"  # "news" and the base left after 2 tokens
    assert three == [alone(model, tok, ids[0], "news", 2), one[1], alone(model, tok, ids[2], None, 2)]
    assert alone(model, tok, ids[0], "news") != one[0]  # the adapters answer differently: a wrong one would show
    biased, tok = adapted(lora_bias=True)  # a LoRA bias: PEFT mixes it, the stacked products do not
    got, seen = run(biased, tok, ["news", "sport", None], (2, 6, 2))
    assert seen[0] == "peft" and got == [alone(biased, tok, ids[0], "news", 2), alone(biased, tok, ids[1], "sport"),
                                         alone(biased, tok, ids[2], None, 2)]

def test_rows_after_a_cached_prefix_per_adapter_answer_as_alone(lora):
    "A server's prefix cache: rows after the cached tokens (one cache per adapter, stacked in one batch), a row that prefills whole, and a row that joins later all answer as each does alone."
    import contextlib, torch
    from finetune_kit.engine import Batch, Prefix, Request, common_prefix, decoding, eos_ids, kv_cache_of
    model, tok, ids = lora
    P = common_prefix(ids[:6])
    assert P >= 8
    stop = eos_ids(model, tok)
    def prefix(adapter):
        out = model(input_ids=torch.tensor([ids[0][:P]]), use_cache=True, adapter_names=[adapter or "__base__"])
        return Prefix(ids[0][:P], *kv_cache_of(out))
    reqs = [Request(ids[0], None, 6), Request(ids[1], "default", 6), Request(ids[2], "default", 6), Request(ids[3], None, 6)]
    late = Request(ids[4], "default", 4)
    asked = []
    with decoding(model):
        caches = {None: prefix(None), "default": prefix("default")}
        def prefixes(r):
            asked.append(r.adapter)
            return None if r is reqs[2] else caches[r.adapter]  # reqs[2] as a prompt that does not start with them
        b = Batch(model, tok, stop, mixed=True, prefixes=prefixes)
        rows = b.add(reqs)
        assert b.att.shape[0] == 4 and len(asked) == 4  # one batch: the prefixed rows and the whole one joined
        b.step()
        rows += b.add([late])
        b.run()
    def alone(r):
        with contextlib.ExitStack() as s:
            if r.adapter is None: s.enter_context(model.disable_adapter())
            return _alone(model, tok, Request(r.ids, max_tokens=r.max_tokens))
    assert [r.tokens for r in rows] == [alone(r) for r in [*reqs, late]]
    assert not torch.equal(caches[None].cache.layers[0].keys, caches["default"].cache.layers[0].keys)  # LoRA moves k
