"""Where the time of train_gpt2.py's step goes: torch.profiler over a few steps of the real script
(the same set-up as bench.train_step), time summed by kernel category, and GPU-busy %.

    python -m bench.profile                       # GPT-2 124M on the GPU, 3 profiled steps
    python -m bench.profile --preset cpu          # CPU smoke run (operators instead of kernels)

Categories by kernel/operator name: matmul (GEMMs), attention (flash / cuDNN / efficient SDPA),
loss (cross-entropy, log-softmax), elementwise / triton (fused pointwise, layer norm, GELU),
optimizer (AdamW), communication (NCCL / gloo), copy (memcpy), other. The names of the attention
kernels that ran are listed, so the backend actually used is on record.
"""

import argparse
import re
import shutil
import time
from pathlib import Path

import torch

from bench.train_step import (
    PRESETS,
    contextlib_sdpa,
    environment,
    random_data,
    random_source,
    save_result,
    train_config,
)

CATEGORIES = [
    ("attention", r"flash|fmha|attention|sdpa|cudnn.*mha|efficient_attention"),
    ("loss", r"cross_entropy|log_softmax|logsumexp|nll_loss|softmax_backward"),
    ("matmul", r"gemm|matmul|\bmm\b|addmm|bmm|cutlass|xmma|sm90|linear|cublas"),
    ("optimizer", r"adam|fused_adamw|_foreach"),
    ("communication", r"nccl|allreduce|all_reduce|gloo|broadcast"),
    ("copy", r"memcpy|memset|copy_|to_copy"),
    ("elementwise / triton", r"triton|elementwise|vectorized|layer_norm|gelu|add|mul|div|reduce|norm"),
]


def category(name: str) -> str:
    low = name.lower()
    return next((c for c, pattern in CATEGORIES if re.search(pattern, low)), "other")


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--preset", choices=list(PRESETS), default="gpt2-124m" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch_size", type=int, default=0)
    ap.add_argument("--warmup", type=int, default=3, help="steps before profiling, at least 2 (compilation is here)")
    ap.add_argument("--active", type=int, default=3, help="profiled steps")
    ap.add_argument("--compile", default="auto", choices=["auto", "true", "false"])
    ap.add_argument("--sdpa", default="auto", choices=["auto", "flash", "cudnn", "efficient", "math"])
    ap.add_argument("--out", default="")
    args = ap.parse_args(argv)

    import tempfile

    import train_gpt2

    p = PRESETS[args.preset]
    cuda = torch.cuda.is_available()
    B = args.batch_size or (16 if args.preset == "gpt2-124m" else 4)
    steps = args.warmup + args.active
    train_ids, tok = random_data(p["vocab"], p["tokens_per_step"] * steps + p["block_size"] + 1)
    val_ids, _ = random_data(p["vocab"], 4 * p["block_size"] + 1, seed=1)
    activities = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if cuda else [])
    prof = torch.profiler.profile(
        activities=activities, schedule=torch.profiler.schedule(wait=1, warmup=args.warmup - 1, active=args.active)
    )
    real_step, window = train_gpt2.step_unless, {}

    def step_and_tick(optimizer, skip):  # the profiler advances once per optimizer step
        real_step(optimizer, skip)
        prof.step()
        if prof.step_num in (args.warmup, steps):  # the profiled window's wall time, GPU drained
            if cuda:
                torch.cuda.synchronize()
            window["t0" if prof.step_num == args.warmup else "t1"] = time.perf_counter()

    train_gpt2.step_unless = step_and_tick
    out = Path(tempfile.mkdtemp(prefix="bench-profile-"))
    compile_ = {"auto": None, "true": True, "false": False}[args.compile]
    cfg = train_config(p, B, steps, out, log_interval=10**6, compile=compile_)
    try:
        with prof, random_source(train_ids, val_ids, tok), contextlib_sdpa(args.sdpa):
            train_gpt2.main(cfg)
    finally:
        train_gpt2.step_unless = real_step
        shutil.rmtree(out, ignore_errors=True)  # the run's checkpoint and export are not kept
    use_device = cuda
    totals, attention_kernels = {}, set()
    for e in prof.key_averages():
        t = (e.self_device_time_total if use_device else e.self_cpu_time_total) / 1e3  # ms
        if t <= 0 or (use_device and e.device_type != torch.autograd.DeviceType.CUDA and e.self_device_time_total == 0):
            continue
        c = category(e.key)
        totals[c] = totals.get(c, 0.0) + t
        if c == "attention":
            attention_kernels.add(e.key[:120])
    busy = sum(totals.values())
    wall_ms = 1e3 * (window.get("t1", 0) - window.get("t0", 0)) if "t1" in window else None
    result = {
        **environment(),
        "case": f"profile of train_gpt2 step, {args.preset}, micro-batch {B}",
        "profiled_steps": args.active,
        "ms_by_category": {k: round(v, 2) for k, v in sorted(totals.items(), key=lambda kv: -kv[1])},
        "share_by_category": {k: round(v / busy, 3) for k, v in sorted(totals.items(), key=lambda kv: -kv[1])},
        "gpu_busy_percent": round(100 * busy / wall_ms, 1) if (cuda and wall_ms) else None,
        "attention_kernels": sorted(attention_kernels),
    }
    print(f"{'category':24} {'ms':>10} {'share':>7}")
    for k, v in result["ms_by_category"].items():
        print(f"{k:24} {v:>10.1f} {100 * result['share_by_category'][k]:>6.1f}%")
    if result["gpu_busy_percent"] is not None:
        print(f"GPU busy: {result['gpu_busy_percent']}% of {wall_ms:.0f} ms")
    print("attention kernels:", ", ".join(result["attention_kernels"]) or "-")
    return save_result(result, args.out, "profile")


if __name__ == "__main__":
    main()
