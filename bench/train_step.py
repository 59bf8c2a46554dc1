"""train_gpt2.py's own training step, timed: the script's main() runs for real (accumulation,
loss normalisation, clipping, the fused AdamW step, logging), on random token ids of a GPT-2-sized
vocabulary instead of a corpus, so no data set or tokenizer download is needed.

    python -m bench.train_step                                  # GPT-2 124M, T=1024, ~0.5M tokens/step
    python -m bench.train_step --batch_size 32 --compile false  # eager
    python -m bench.train_step --sdpa cudnn                     # pin the attention kernel (flash, cudnn, ...)
    python -m bench.train_step --preset cpu                     # a small CPU smoke run

Every step is a log step (--log_interval 1), so metrics.jsonl holds one tokens/s figure per step;
the first step (compilation, warm-up) is logged apart as warmup_s and the next --skip steps are
not counted either. Reports min/median/max tokens/s over the timed steps, MFU against the table's
peak for the device (MIG slices flagged), and peak memory, as JSON.
"""

import argparse
import contextlib
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

PRESETS = {
    # GPT-2 124M as llm.c / nanoGPT train it: T=1024, 524,288 tokens per optimizer step
    "gpt2-124m": dict(n_layer=12, n_head=12, n_embd=768, block_size=1024, tokens_per_step=524288, vocab=50257),
    "cpu": dict(n_layer=2, n_head=4, n_embd=128, block_size=128, tokens_per_step=2048, vocab=2048),
}


def random_data(vocab: int, n_tokens: int, seed: int = 0):
    """What read_documents/tokenize_cached would give: token ids (uint16) and a tokenizer stand-in."""
    import numpy as np
    from tokenizers import Tokenizer, models

    rng = np.random.default_rng(seed)
    ids = rng.integers(0, vocab - 1, n_tokens, dtype=np.uint16)
    words = {f"t{i}": i for i in range(vocab - 1)} | {"<|endoftext|>": vocab - 1}
    return ids, Tokenizer(models.WordLevel(vocab=words, unk_token="<|endoftext|>"))


def run(args) -> dict:
    import train_gpt2
    from minitrain.models.gpt2 import GPT2, GPT2Config
    from minitrain.training import metrics

    p = PRESETS[args.preset]
    B = args.batch_size or (16 if args.preset == "gpt2-124m" else 4)
    steps = args.steps + args.skip + 1
    need = p["tokens_per_step"] * steps + p["block_size"] + 1
    train_ids, tok = random_data(p["vocab"], need)
    val_ids, _ = random_data(p["vocab"], 4 * p["block_size"] + 1, seed=1)
    out = Path(tempfile.mkdtemp(prefix="bench-train-step-"))
    cfg = train_config(
        p, B, steps, out, log_interval=1, dtype=args.dtype, compile=args.compile, compile_scope=args.compile_scope
    )
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    with random_source(train_ids, val_ids, tok), contextlib_sdpa(args.sdpa):
        train_gpt2.main(cfg)
    wall = time.perf_counter() - t0
    rows = [json.loads(line) for line in (out / "run/metrics.jsonl").read_text().splitlines()]
    shutil.rmtree(out, ignore_errors=True)  # the run's checkpoint and export (GBs at 124M) are not kept
    per_step = [r["tokens_per_sec"] for r in rows if "tokens_per_sec" in r and r["step"] > 1 + args.skip]
    warmup = next((r["warmup_s"] for r in rows if "warmup_s" in r), None)
    name = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    peak = metrics.peak_tflops(name) if torch.cuda.is_available() else None
    with torch.device("meta"):  # the parameter count without allocating the model
        shape = {k: p[k] for k in ("n_embd", "n_layer", "n_head")}
        n_params = GPT2(GPT2Config(vocab_size=p["vocab"], n_positions=p["block_size"], **shape)).num_params()
    flops = metrics.flops_per_token(n_params, p["n_layer"], p["n_embd"], p["block_size"])
    median = statistics.median(per_step) if per_step else None
    hs = p["n_embd"] // p["n_head"]
    kernels = attention_kernels(args.sdpa, (B, p["n_head"], p["block_size"], hs))
    result = {
        "case": f"train_gpt2 step, {args.preset}",
        "micro_batch": B,
        "block_size": p["block_size"],
        "tokens_per_step": p["tokens_per_step"],
        "accumulation": p["tokens_per_step"] // (B * p["block_size"]),
        "compile": args.compile,
        "compile_scope": args.compile_scope,
        "sdpa": args.sdpa,
        "attention_kernels": kernels,
        "dtype": args.dtype,
        "timed_steps": len(per_step),
        "tokens_per_sec_min": min(per_step) if per_step else None,
        "tokens_per_sec_median": median,
        "tokens_per_sec_max": max(per_step) if per_step else None,
        "warmup_s": warmup,
        "wall_s": round(wall, 1),
        "params": n_params,
        "flops_per_token": flops,
        "peak_tflops": peak,
        "mfu_median": round(flops * median / (peak * 1e12), 4) if (peak and flops and median) else None,
        "peak_mem_GiB": round(torch.cuda.max_memory_allocated() / 2**30, 2) if torch.cuda.is_available() else None,
    }
    return result


def train_config(p: dict, batch_size: int, steps: int, out: Path, **options):
    """train_gpt2.Config for a timing run of preset `p`: GPT-2 reproduction hyper-parameters, no
    evaluation, checkpoint or samples in the timed steps (one of each at the end)."""
    import train_gpt2

    shape = {k: p[k] for k in ("n_layer", "n_head", "n_embd", "block_size", "tokens_per_step")}
    stand_in = out / "random.txt"  # --data names a real text file; random_source replaces what is read
    stand_in.parent.mkdir(parents=True, exist_ok=True)
    stand_in.write_text("random token ids stand in for this text\n")
    return train_gpt2.Config(
        data=str(stand_in), out_dir=str(out / "run"), cache_dir=str(out / "cache"), **shape, batch_size=batch_size,
        max_steps=steps, warmup_steps=10, lr=6e-4, min_lr=6e-5, eval_interval=10**9, save_interval=10**9,
        eval_batches=1, num_samples=0, progress=False, export="final", **options,
    )  # fmt: skip


@contextlib.contextmanager
def random_source(train_ids, val_ids, tok):
    """The data source is the only thing replaced: the tokenizer and the token ids come from memory
    while the block runs (and are put back after it)."""
    import train_gpt2
    from minitrain.data import tokens as data

    saved = train_gpt2.open_splits, train_gpt2.pick_tokenizer
    train_gpt2.open_splits = lambda *args: (data.Tokens([train_ids]), data.Tokens([val_ids]))
    train_gpt2.pick_tokenizer = lambda *args: tok
    try:
        yield
    finally:
        train_gpt2.open_splits, train_gpt2.pick_tokenizer = saved


def contextlib_sdpa(name: str):
    """Pin scaled_dot_product_attention to one backend (or leave PyTorch's choice: auto)."""
    if name == "auto":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    backends = {
        "flash": SDPBackend.FLASH_ATTENTION,
        "cudnn": SDPBackend.CUDNN_ATTENTION,
        "efficient": SDPBackend.EFFICIENT_ATTENTION,
        "math": SDPBackend.MATH,
    }
    return sdpa_kernel([backends[name]])


def attention_kernels(sdpa: str, shape: tuple) -> list[str]:
    """The attention kernels that scaled_dot_product_attention runs, forward and backward, for the
    step's (B, nh, T, hs) causal attention under the same backend setting: which kernel ran, on record
    (on CUDA the device kernels in bf16, as autocast gives them; on CPU the operators)."""
    from bench.profile import category

    cuda = torch.cuda.is_available()
    dtype = torch.bfloat16 if cuda else torch.float32
    q, k, v = (torch.randn(shape, device="cuda" if cuda else "cpu", dtype=dtype, requires_grad=True) for _ in "qkv")
    activities = [torch.profiler.ProfilerActivity.CUDA if cuda else torch.profiler.ProfilerActivity.CPU]
    with torch.profiler.profile(activities=activities) as prof, contextlib_sdpa(sdpa):
        torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True).sum().backward()
        if cuda:
            torch.cuda.synchronize()
    names = {e.key for e in prof.key_averages() if not cuda or e.device_type == torch.autograd.DeviceType.CUDA}
    return sorted(n[:120] for n in names if category(n) == "attention")


def save_result(result: dict, out: str, name: str, folder: str = "bench/results") -> dict:
    """Write a result as JSON to the file `out`, or else to FOLDER/NAME-DATE.json; returns it."""
    path = Path(out or f"{folder}/{name}-{time.strftime('%Y%m%d-%H%M%S')}.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2))
    print(f"wrote {path}")
    return result


def environment() -> dict:
    """Device, versions and commit: every figure must be traceable to where it was measured."""
    cuda = torch.cuda.is_available()
    name = torch.cuda.get_device_name() if cuda else "cpu"
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=Path(__file__).parent
        ).stdout.strip()
    except OSError:
        commit = ""
    return {
        "device": name,
        "mig_slice": "MIG" in name,
        "gpus": torch.cuda.device_count() if cuda else 0,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if cuda else None,
        "python": sys.version.split()[0],
        "commit": commit or "unknown",
    }


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--preset", choices=list(PRESETS), default="gpt2-124m" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch_size", type=int, default=0, help="micro-batch (default 16; 4 on the cpu preset)")
    ap.add_argument("--steps", type=int, default=50, help="timed optimizer steps")
    ap.add_argument("--skip", type=int, default=2, help="steps after the first that are not counted")
    ap.add_argument("--compile", default="auto", choices=["auto", "true", "false"])
    ap.add_argument("--compile_scope", default="blocks", choices=["blocks", "model"])
    ap.add_argument("--sdpa", default="auto", choices=["auto", "flash", "cudnn", "efficient", "math"])
    ap.add_argument("--dtype", default="auto", choices=["auto", "bf16", "fp32"])
    ap.add_argument("--out", default="", help="write the JSON here (default: bench/results/train-step-*.json)")
    args = ap.parse_args(argv)
    args.compile = {"auto": None, "true": True, "false": False}[args.compile]
    result = {**environment(), **run(args)}
    print(json.dumps(result, indent=2))
    return save_result(result, args.out, "train-step")


if __name__ == "__main__":
    main()
