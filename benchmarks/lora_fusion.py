"""What a fused LoRA product would pay in training: SmolLM2-135M-Instruct with the kit's LoRA (r=16, all linear
layers), one forward and backward over a batch of random tokens, with PEFT's LoRA layers as they are against the
same layers computing `base + scaling * (x A^T) B^T` as one `addmm` (the scaling and the add fused into the second
product: no separate multiply and add over the layer's whole output, forward or backward).

PEFT has no fused LoRA option for its `Linear` layer, so the fused side patches each LoRA layer's forward in this
script only; the kit does not ship it. Both sides run in the same process on the same model and tokens,
interleaved repeat by repeat, so load from other processes affects both alike. Prints each side's seconds per
forward-backward, the largest gradient difference between them, and last `fused_lora_speedup: <PEFT s / fused s>`.

    python benchmarks/lora_fusion.py [--batch 8] [--tokens 200] [--repeats 5] [--threads N]
"""
import argparse, contextlib, statistics, time

def fused_forward(layer):
    "A forward for PEFT's LoRA `Linear` with one plain adapter: the base product, then one addmm for the adapter."
    import torch
    def forward(x, *args, **kwargs):
        result = layer.base_layer(x, *args, **kwargs)
        name = layer.active_adapters[0]
        A, B = layer.lora_A[name], layer.lora_B[name]
        h = A(layer.lora_dropout[name](x.to(A.weight.dtype)))
        out = torch.addmm(result.reshape(-1, result.shape[-1]), h.reshape(-1, h.shape[-1]), B.weight.t(),
                          alpha=layer.scaling[name])
        return out.view(result.shape)
    return forward

@contextlib.contextmanager
def fused(model):
    from peft.tuners.lora.layer import Linear
    layers = [m for m in model.modules() if type(m) is Linear]
    assert layers and all(len(m.active_adapters) == 1 and not m.merged and not m.lora_variant for m in layers)
    for m in layers: m.forward = fused_forward(m)
    try: yield len(layers)
    finally:
        for m in layers: del m.forward

def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None)
    a = ap.parse_args()
    import os, torch
    if a.threads: torch.set_num_threads(a.threads)
    from finetune_kit.settings import make_config
    from finetune_kit.models import load_model
    from finetune_kit.adapters import apply_peft
    cfg = make_config(settings=False, base_model="smollm2-135m-instruct", peft_method="lora", lora_r=16)
    model, _ = load_model(cfg, progress=False)
    model = apply_peft(model, cfg)
    model.train()
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(model.config.vocab_size, (a.batch, a.tokens), generator=g)
    for p in model.parameters():  # LoRA's B starts at zero: give it weights so its products and gradients are real
        if p.requires_grad and p.dim() == 2 and not p.any(): torch.nn.init.normal_(p, std=0.01, generator=g)
    def step():
        model.zero_grad(set_to_none=True)
        model(input_ids=ids, labels=ids).loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    ref = step()
    with fused(model) as n: got = step()
    diff = max((ref[k] - got[k]).abs().max().item() / max(ref[k].abs().max().item(), 1e-12) for k in ref)
    print(f"SmolLM2-135M-Instruct, LoRA r16 on {n} linear layers, {model.dtype}, batch {a.batch} x {a.tokens} tokens, "
          f"torch threads {torch.get_num_threads()}, load average {os.getloadavg()[0]:.2f}")
    print(f"largest gradient difference (relative to each gradient's largest value): {diff:.2e}")
    times = {"peft": [], "fused": []}
    for _ in range(a.repeats):
        for side in times:
            with (fused(model) if side == "fused" else contextlib.nullcontext()):
                t = time.perf_counter(); step(); times[side].append(time.perf_counter() - t)
    for side, ts in times.items():
        print(f"{side:>6}: median {statistics.median(ts):.3f} s per forward-backward "
              f"({', '.join(f'{t:.2f}' for t in ts)})")
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    print(f"fused_lora_speedup: {statistics.median(times['peft']) / statistics.median(times['fused']):.3f}")

if __name__ == "__main__":
    main()
