"""Shared by the benchmarks: the device's matrix-product peak, and the useful FLOPs of a training step."""
import time

def matmul_peak(dtype:str="float32", n:int=2048, repeats:int=5, device:str="cpu") -> float:
    "GFLOP/s of the best of `repeats` timed `torch.mm` products of two n x n `dtype` matrices, after a warm-up."
    import torch
    dt = getattr(torch, dtype)
    a, b = torch.randn(n, n, device=device).to(dt), torch.randn(n, n, device=device).to(dt)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    for _ in range(2): torch.mm(a, b)
    sync()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter(); torch.mm(a, b); sync(); best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e9

def device_peak(device:str="cpu", sizes=(1024, 2048, 4096), repeats:int=3) -> dict:
    "`{dtype: best GFLOP/s}` for fp32 and bf16 (and fp16 on CUDA) on `device`."
    dts = ["float32", "bfloat16"] + (["float16"] if device.startswith("cuda") else [])
    return {dt: max(matmul_peak(dt, n, repeats, device) for n in sizes) for dt in dts}

def linear_params(model) -> tuple[int, int]:
    "(weights of the transformer blocks' linear layers, weights of the output layer) of a causal LM."
    import torch
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    head = base.get_output_embeddings()
    blocks = sum(m.weight.numel() for n, m in base.named_modules()
                 if isinstance(m, torch.nn.Linear) and m is not head and "lora_" not in n and hasattr(m, "weight"))
    return blocks, head.weight.numel()

def train_flops(blocks:int, head:int, tokens:int, loss_tokens:int, full:bool=False) -> float:
    """Useful FLOPs of training on `tokens` non-padding tokens of which `loss_tokens` carry loss: the forward (2 per
    weight per token), the backward to the inputs (2 more) and, for full fine-tuning, to the weights (2 more); the
    output layer only where a label is (what the loss needs). Attention's score products are left out (small at
    these lengths), as are adapter weights (a fraction of a percent)."""
    per = 6 if full else 4
    return per * blocks * tokens + per * head * loss_tokens
