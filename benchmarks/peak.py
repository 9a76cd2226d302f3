"""The device's matrix-product peak, in fp32 and bf16 (and fp16 on CUDA): what "fast" can mean on this machine.

Times square matrix products (`torch.mm`) of a few sizes, best of several repeats after a warm-up, on the CPU
(all its threads) or on the first CUDA GPU, and prints GFLOP/s per dtype and size. The training and evaluation
benchmarks divide their useful FLOP/s by the best of these peaks (`_bench.device_peak`).

Last line: `peak_gflops: <the best GFLOP/s of any dtype>`.

    python benchmarks/peak.py [--sizes 1024,2048,4096] [--repeats 5]
"""
import argparse
from _bench import matmul_peak

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="1024,2048,4096")
    ap.add_argument("--repeats", type=int, default=5)
    a = ap.parse_args()
    import torch
    from finetune_kit.models import detect_bf16
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    bf16, why = detect_bf16()
    print(f"device: {dev} ({torch.get_num_threads()} threads); {why}")
    dtypes = ["float32", "bfloat16"] + (["float16"] if dev == "cuda" else [])
    best = {}
    for dt in dtypes:
        for n in map(int, a.sizes.split(",")):
            g = matmul_peak(dt, n, a.repeats, dev)
            best[dt] = max(best.get(dt, 0), g)
            print(f"{dt:9s} {n:5d}x{n:<5d} {g:8.1f} GFLOP/s", flush=True)
    for dt, g in best.items(): print(f"peak_{dt}: {g:.1f}")
    print(f"peak_gflops: {max(best.values()):.1f}")

if __name__ == "__main__":
    main()
