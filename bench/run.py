"""make bench: training tokens/s, MFU, peak memory and step-time spread, with a same-run peer.

    python -m bench.run                 # the cases for this machine (CUDA if present, else CPU)
    python -m bench.run --vs hf         # also time transformers' model on identical batches
    python -m bench.run --cases gpt2-124m --steps 50 --compile

A timed step is the work of a real training step: forward, backward, gradient clipping and a
(fused on CUDA) AdamW step, on a batch taken from a pre-made token tensor, so the model's speed is
measured and not the input pipeline's (which is timed separately, see `pipeline`). Warm-up steps,
compilation included, are not timed; on CUDA every timed step is bracketed by synchronize().
BERT batches are half padded, as pair batches are; tokens/s and MFU count real tokens only.
Only PyTorch is needed on this path (numpy for the pipeline case); transformers only for --vs hf.
"""

import argparse
import platform
import statistics
import time

import torch

from bench.train_step import environment, save_result
from minitrain.models.bert import BertConfig, BertForSequenceClassification
from minitrain.models.gpt2 import GPT2, GPT2Config
from minitrain.models.llama import Llama, LlamaConfig
from minitrain.training.metrics import flops_per_token, peak_tflops
from minitrain.training.precision import resolve_dtype

SMOLLM2_135M = dict(  # HuggingFaceTB/SmolLM2-135M's config
    vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
    num_key_value_heads=3, max_position_embeddings=8192, rms_norm_eps=1e-5, rope_theta=100000.0,
)  # fmt: skip
LLAMA_32_1B = dict(  # meta-llama/Llama-3.2-1B's config
    vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
    num_key_value_heads=8, head_dim=64, max_position_embeddings=131072, rms_norm_eps=1e-5, rope_theta=500000.0,
    rope_scaling=dict(rope_type="llama3", factor=32.0, low_freq_factor=1.0, high_freq_factor=4.0,
                      original_max_position_embeddings=8192),
)  # fmt: skip

# name: (kind, model config, micro-batch, sequence length)
CASES = {
    "smollm2-135m": ("llama", SMOLLM2_135M, 16, 2048),
    "llama3.2-1b": ("llama", LLAMA_32_1B, 4, 2048),
    "gpt2-124m": ("gpt2", dict(n_layer=12, n_head=12, n_embd=768, n_positions=1024), 16, 1024),
    "gpt2-350m": ("gpt2", dict(n_layer=24, n_head=16, n_embd=1024, n_positions=1024), 8, 1024),
    "bert-base": ("bert", dict(), 32, 128),
    # CPU-sized shapes: each finishes in well under a minute on 2 cores
    "gpt2-cpu": ("gpt2", dict(n_layer=4, n_head=4, n_embd=256, n_positions=256), 4, 256),
    "smollm2-cpu": ("llama", dict(SMOLLM2_135M, num_hidden_layers=4, max_position_embeddings=256), 2, 128),
    "bert-cpu": (
        "bert",
        dict(num_hidden_layers=6, hidden_size=384, num_attention_heads=12, intermediate_size=1536),
        16,
        128,
    ),
    # smoke shapes (bench.gpu --smoke): the same code, seconds each
    "gpt2-tiny": ("gpt2", dict(n_layer=2, n_head=2, n_embd=64, n_positions=64), 2, 64),
    "smollm2-tiny": ("llama", dict(SMOLLM2_135M, vocab_size=512, hidden_size=72, num_hidden_layers=2), 2, 64),
    "bert-tiny": ("bert", dict(num_hidden_layers=2, hidden_size=64, num_attention_heads=4), 4, 64),
}
GPU_CASES = ["gpt2-124m", "gpt2-350m", "bert-base", "smollm2-135m", "llama3.2-1b"]
CPU_CASES = ["gpt2-cpu", "bert-cpu", "smollm2-cpu"]
CAUSAL = ("gpt2", "llama")


def build(kind, cfg, impl):
    torch.manual_seed(0)
    if impl == "minitrain":
        if kind == "gpt2":
            return GPT2(GPT2Config(**cfg))
        if kind == "llama":
            return Llama(LlamaConfig(**cfg))
        return BertForSequenceClassification(BertConfig(**cfg))
    import transformers  # the peer, only with --vs hf

    if kind == "gpt2":
        c = transformers.GPT2Config(**cfg, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
        return transformers.GPT2LMHeadModel(c)
    if kind == "llama":
        return transformers.LlamaForCausalLM(transformers.LlamaConfig(**cfg, tie_word_embeddings=True))
    return transformers.BertForSequenceClassification(transformers.BertConfig(**cfg))


def loss_fn(kind, impl, model, batch):
    if kind in CAUSAL:
        x, y = batch
        if impl == "minitrain":
            return model(x, y)[1]
        return model(input_ids=x, labels=x).loss  # transformers shifts the labels itself
    ids, mask, labels = batch
    if impl == "minitrain":
        return model(ids, mask, labels=labels)[1]
    return model(input_ids=ids, attention_mask=mask, labels=labels).loss


def make_batches(kind, vocab, B, T, n, device):
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, vocab, (n, B, T + 1), generator=g)  # the pre-made token tensor
    if kind in CAUSAL:
        return [(t[:, :-1].to(device), t[:, 1:].to(device)) for t in tokens]
    mask = torch.ones(B, T, dtype=torch.long)
    mask[: B // 2, T // 2 :] = 0  # half the rows padded, as real pair batches are
    labels = torch.randint(0, 2, (B,), generator=g)
    return [(t[:, :-1].to(device), mask.to(device), labels.to(device)) for t in tokens]


def time_case(name, impl, args, device, dtype):
    kind, cfg, B, T = CASES[name]
    B = args.batch_size or B
    model = build(kind, cfg, impl).to(device).train()
    n_params = sum(p.numel() for p in model.parameters())
    if kind == "gpt2":
        emb = model.transformer.wpe.weight.numel()
    elif kind == "llama":
        emb = 0  # tied: the embedding matrix is the LM head's matmul, counted once
    else:
        emb = sum(p.numel() for n, p in model.named_parameters() if "embeddings" in n)
    vocab = {"gpt2": 50257, "bert": 30522}.get(kind) or cfg.get("vocab_size")
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
    step_model = torch.compile(model) if args.compile else model
    batches = make_batches(kind, vocab, B, T, 4, device)
    amp = (
        torch.autocast(device.type, dtype=dtype)
        if dtype != torch.float32
        else torch.autocast(device.type, enabled=False)
    )
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def step(i):
        with amp:
            loss = loss_fn(kind, impl, step_model, batches[i % len(batches)])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    for i in range(args.warmup):
        step(i)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for i in range(args.steps):
        sync()
        t0 = time.perf_counter()
        step(i)
        sync()
        times.append(time.perf_counter() - t0)
    # tokens that carry data: padding is not work done for the user (and minitrain's BERT skips
    # it outside attention), so a padded BERT batch counts its real tokens only
    real_tokens = B * T if kind in CAUSAL else int(batches[0][1].sum())
    tokens_per_sec = real_tokens / statistics.median(times)
    if kind == "gpt2":
        c = model.config
        flops = flops_per_token(n_params - emb, c.n_layer, c.n_embd, T)
    else:
        c = model.config
        flops = flops_per_token(n_params - emb, c.num_hidden_layers, c.hidden_size, T)
    return {
        "case": name,
        "impl": impl,
        "batch": B,
        "seq": T,
        "params_M": round(n_params / 1e6, 2),
        # transformers' attention implementation ("sdpa" is the peer asked for); minitrain calls SDPA
        "attention": getattr(model.config, "_attn_implementation", None) if impl == "hf" else "sdpa",
        "tokens_per_sec": round(tokens_per_sec, 1),
        "examples_per_sec": round(B / statistics.median(times), 2),  # sequences or pairs
        "step_ms_min": round(1e3 * min(times), 2),
        "step_ms_median": round(1e3 * statistics.median(times), 2),
        "step_ms_max": round(1e3 * max(times), 2),
        "flops_per_token": flops,
        "peak_mem_GiB": (round(torch.cuda.max_memory_allocated(device) / 2**30, 2) if device.type == "cuda" else None),
    }


def measured_peak_tflops(device, dtype):
    """For a GPU missing from the table: the bf16 matmul rate we reach (MFU is relative to it)."""
    n = 8192
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(20):
        a @ b
    torch.cuda.synchronize()
    return 2 * n**3 * 20 / (time.perf_counter() - t0) / 1e12


def pipeline_throughput():
    """The input pipeline: batches/s of the memory-mapped block loader (and tokens/s of
    tokenization when the tokenizers package is present)."""
    try:
        import numpy as np

        from minitrain.data import tokens as data
    except ImportError as e:  # a bare GPU image with torch only
        return {"loader": f"not measured ({e.name} is not installed)"}
    out = {}
    tokens = np.random.default_rng(0).integers(0, 50257, 20_000_000, dtype=np.uint16)
    tokens = data.Tokens([tokens])
    order = data.EpochOrder(tokens, 1024, 0, 0)
    n_blocks = len(order)
    t0, n = time.perf_counter(), 0
    while time.perf_counter() - t0 < 2.0:
        start = (n * 16) % (n_blocks - 16)
        tokens.batch(order[start : start + 16], 1024)
        n += 1
    out["loader_batches_per_sec_16x1024"] = round(n / (time.perf_counter() - t0), 1)
    out["loader_tokens_per_sec"] = round(out["loader_batches_per_sec_16x1024"] * 16 * 1024)
    try:
        from minitrain.data.sources import shakespeare_files
        from minitrain.data.tokenizer import train_bpe

        text = shakespeare_files()[0].read_text()
        tok = train_bpe([text], 2048)
        docs = [text] * 8
        t0 = time.perf_counter()
        n_tok = sum(len(e.ids) for e in tok.encode_batch(docs))
        out["tokenize_tokens_per_sec"] = round(n_tok / (time.perf_counter() - t0))
    except Exception as e:  # tokenizers or the corpus missing (e.g. a bare GPU image)
        out["tokenize_tokens_per_sec"] = f"not measured ({type(e).__name__})"
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--cases", nargs="*", help=f"of {', '.join(CASES)}")
    p.add_argument("--vs", choices=["hf"], help="also time transformers' model, same batches")
    p.add_argument("--steps", type=int, default=0, help="timed steps per round (default 20 GPU, 8 CPU)")
    p.add_argument("--warmup", type=int, default=0, help="untimed steps first (default 5 GPU, 2 CPU)")
    p.add_argument("--rounds", type=int, default=2, help="alternating rounds; the best counts")
    p.add_argument("--batch_size", type=int, default=0, help="override the case's micro-batch")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--dtype", default="auto", choices=["auto", "bf16", "fp32"], help="auto: as training picks")
    p.add_argument("--ddp", action="store_true", help="also run the 2-process DDP comparison")
    p.add_argument("--pipeline", action=argparse.BooleanOptionalAction, default=True, help="time the input pipeline")
    p.add_argument("--out", default="bench/results")
    args = p.parse_args(argv)

    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    args.steps = args.steps or (20 if cuda else 8)
    args.warmup = args.warmup or (5 if cuda else 2)
    if args.dtype == "auto":  # what train_gpt2.py's --dtype auto trains in here (bf16 on a CPU with AVX-512 BF16)
        dtype = resolve_dtype("auto", device)
    else:
        dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[args.dtype]
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
    device_name = torch.cuda.get_device_name() if cuda else platform.processor() or "cpu"
    peak, peak_note = None, ""
    if cuda:
        peak = peak_tflops(device_name)
        if peak is None:
            peak = measured_peak_tflops(device, torch.bfloat16)
            peak_note = " (not in the table: MFU is relative to a measured 8192^3 bf16 matmul)"
    cases = args.cases or (GPU_CASES if cuda else CPU_CASES)
    impls = ["minitrain"] + (["hf"] if args.vs else [])
    header = {
        **environment(),
        "device": device_name,
        "dtype": str(dtype).split(".")[-1],
        "compile": args.compile,
        "peak_tflops": peak,
        "config": vars(args),
    }
    print(
        f"device: {device_name}{peak_note}; torch {torch.__version__}; dtype {header['dtype']}; compile {args.compile}"
    )
    rows = []
    for name in cases:
        # Alternate the implementations for --rounds rounds and keep each one's best round, so that
        # a slow patch of a shared machine does not land on one side only.
        best = {}
        for _ in range(args.rounds):
            for impl in impls:
                r = time_case(name, impl, args, device, dtype)
                if impl not in best or r["tokens_per_sec"] > best[impl]["tokens_per_sec"]:
                    best[impl] = r
        for impl in impls:
            r = best[impl]
            r["mfu"] = round(r["flops_per_token"] * r["tokens_per_sec"] / (peak * 1e12), 4) if peak else None
            rows.append(r)
    print(
        f"{'case':10} {'impl':9} {'B x T':>10} {'tokens/s':>11} {'ex/s':>8} {'MFU':>6} "
        f"{'mem GiB':>8} "
        f"{'step ms (min/med/max)':>24}"
    )
    for r in rows:
        mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "-"
        mem = f"{r['peak_mem_GiB']:.2f}" if r["peak_mem_GiB"] is not None else "-"
        spread = f"{r['step_ms_min']:.1f}/{r['step_ms_median']:.1f}/{r['step_ms_max']:.1f}"
        print(
            f"{r['case']:10} {r['impl']:9} {r['batch']:>4} x {r['seq']:<4} "
            f"{r['tokens_per_sec']:>11,.0f} {r['examples_per_sec']:>8,.1f} {mfu:>6} {mem:>8} "
            f"{spread:>24}"
        )
    ratios = {}
    for name in cases:
        ours = [r for r in rows if r["case"] == name and r["impl"] == "minitrain"]
        theirs = [r for r in rows if r["case"] == name and r["impl"] == "hf"]
        if ours and theirs:
            ratios[name] = round(ours[0]["tokens_per_sec"] / theirs[0]["tokens_per_sec"], 3)
            print(f"{name}: minitrain / transformers tokens/s = {ratios[name]:.3f}")
    pipe = pipeline_throughput() if args.pipeline else {"loader": "not measured (--no-pipeline)"}
    print(f"input pipeline: {pipe}")
    result = {**header, "rows": rows, "vs_hf": ratios, "pipeline": pipe}
    if args.ddp and cuda and torch.cuda.device_count() < 2:
        print("ddp: not run (one GPU; the comparison needs two processes on two devices)")
    elif args.ddp:
        from bench.ddp import compare

        result["ddp"] = compare(device)
    return save_result(result, "", "bench", folder=args.out)  # --out: a folder


if __name__ == "__main__":
    main()
