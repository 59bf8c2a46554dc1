"""Train GPT-2 on text: from scratch, or fine-tuning a Hugging Face checkpoint.

    python train_gpt2.py                                   # the offline default: a small GPT-2
                                                           # from scratch on Shakespeare (CPU ok)
    torchrun --standalone --nproc_per_node=2 train_gpt2.py # the same, data-parallel, 2 processes
    python train_gpt2.py --init_from=gpt2 --data=my.txt    # fine-tune GPT-2 124M on your text
    python train_gpt2.py --max_steps=20 --eval_interval=10 # a CPU smoke run
    python train_gpt2.py --resume=auto                     # continue the run in --out_dir
    python train_gpt2.py --help                            # every option

Features: byte-level BPE trained on the corpus (scratch) or the checkpoint's tokenizer
(fine-tuning); a token cache on disk; seeded epochs; AdamW with decay on matrices only; linear,
cosine or constant schedules with warmup; gradient accumulation normalised by target tokens;
clipping; bf16/fp16 autocast (GradScaler for fp16); torch.compile; hand-written data parallelism
(or PyTorch's DDP with --ddp=torch); evaluation with perplexity; progress bar, TensorBoard and
metrics.jsonl; atomic, exactly resumable checkpoints; export to the Hugging Face format; sampling.
"""

import contextlib
import json
import math
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from minitrain import UserError, checkpoint, data, dist
from minitrain.config import run_cli
from minitrain.ddp import wrap
from minitrain.generate import sample_texts
from minitrain.gpt2 import GPT2, GPT2Config
from minitrain.logger import Logger
from minitrain.metrics import flops_per_token, peak_tflops, perplexity
from minitrain.optim import SCHEDULES, lr_at, make_optimizer
from minitrain.precision import autocast, make_scaler, resolve_dtype
from minitrain.tokenizer import EOT, eot_id, load_tokenizer, train_bpe


@dataclass
class Config:
    """Causal language modelling with GPT-2. Every option is --key=value (or --key value)."""

    # data
    data: str = (
        "shakespeare"  # corpus: 'shakespeare', a .txt file, a folder/glob of .txt, hf:NAME[:CONFIG]
    )
    val_fraction: float = (
        0.1  # share of the corpus held out for validation (when it has no val split)
    )
    cache_dir: str = "~/.cache/minitrain"  # where tokenized data and trained tokenizers are cached
    # model
    init_from: str = "scratch"  # 'scratch', a hub id (gpt2, gpt2-medium, ...) or a local HF folder
    tokenizer: str = (
        ""  # scratch only: a tokenizer folder; empty trains a byte-level BPE on the data
    )
    vocab_size: int = 2048  # scratch only: size of the BPE vocabulary to train
    n_layer: int = 4  # scratch only: transformer blocks
    n_head: int = 4  # scratch only: attention heads
    n_embd: int = 128  # scratch only: width of the residual stream
    block_size: int = 128  # context length in tokens (at most the model's n_positions)
    dropout: float = 0.0  # dropout on embeddings, attention and residual branches
    # optimisation
    batch_size: int = 16  # micro-batch per process, in sequences
    grad_accum_steps: int = 1  # micro-batches per optimizer step (ignored if tokens_per_step > 0)
    tokens_per_step: int = 0  # if > 0: tokens per optimizer step; accumulation is derived from it
    max_steps: int = 1000  # optimizer steps to train for (when epochs is 0)
    epochs: float = 0.0  # if > 0: train for this many passes over the training blocks instead
    lr: float = 2e-3  # peak learning rate
    min_lr: float = 2e-4  # the learning rate at the end of the decay
    schedule: str = "cosine"  # learning-rate schedule after warmup: linear, cosine or constant
    warmup_steps: int = 100  # steps of linear warmup from 0 to lr
    weight_decay: float = 0.1  # AdamW weight decay, on >= 2-D parameters only
    beta1: float = 0.9  # AdamW beta1
    beta2: float = 0.95  # AdamW beta2
    max_grad_norm: float = 1.0  # clip the global gradient norm to this (0 disables clipping)
    max_bad_steps: int = 5  # stop after this many consecutive steps with a non-finite loss/grad
    # system
    device: str = "auto"  # auto, cpu or cuda
    dtype: str = "auto"  # auto (bf16 on a GPU that has it, else fp32), bf16, fp16 or fp32
    compile: bool = False  # torch.compile the model
    activation_checkpointing: bool = False  # recompute activations in backward to save memory
    ddp: str = "minitrain"  # data parallelism under torchrun: minitrain (hand-written) or torch
    seed: int = 1337  # seeds initialisation, data order and dropout
    # evaluation, logging, checkpoints
    eval_interval: int = 250  # evaluate every this many steps (and at the end)
    eval_batches: int = 20  # validation batches per evaluation (0: the whole validation split)
    log_interval: int = 10  # log the training loss every this many steps
    progress: bool = True  # show a progress bar
    out_dir: str = "out/gpt2"  # everything the run writes: checkpoints, logs, the exported model
    save_interval: int = 250  # write a checkpoint every this many steps (and at the end)
    keep_last: int = 2  # keep the newest N step checkpoints (best.pt is kept as well)
    resume: str = ""  # a checkpoint file to continue from, or 'auto' for the newest in out_dir
    overwrite: bool = False  # allow starting a new run in an out_dir that holds another run
    # sampling at the end
    prompt: str = "ROMEO:"  # text the samples start from
    num_samples: int = 2  # samples to generate at the end
    max_new_tokens: int = 100  # tokens per sample
    temperature: float = 0.8  # sampling temperature (0: greedy)
    top_k: int = 50  # sample among the k most likely tokens (0: all)
    top_p: float = 1.0  # nucleus sampling: the smallest set with this much probability


def check_config(cfg: Config) -> None:
    """Reject impossible values before any heavy work, each with one sentence."""
    positive = [
        "batch_size",
        "grad_accum_steps",
        "block_size",
        "eval_interval",
        "log_interval",
        "save_interval",
        "vocab_size",
        "n_layer",
        "n_head",
        "n_embd",
        "max_bad_steps",
    ]
    for name in positive:
        if getattr(cfg, name) <= 0:
            raise UserError(f"--{name}={getattr(cfg, name)} must be a positive number.")
    if cfg.lr <= 0:
        raise UserError(f"--lr={cfg.lr} must be positive.")
    for name in (
        "max_steps",
        "tokens_per_step",
        "warmup_steps",
        "eval_batches",
        "min_lr",
        "epochs",
        "weight_decay",
        "max_grad_norm",
        "num_samples",
        "max_new_tokens",
        "keep_last",
    ):
        if getattr(cfg, name) < 0:
            raise UserError(f"--{name}={getattr(cfg, name)} must not be negative.")
    if cfg.max_steps == 0 and cfg.epochs == 0:
        raise UserError("nothing to train: set --max_steps or --epochs to a positive number.")
    if cfg.schedule not in SCHEDULES:
        raise UserError(f"--schedule={cfg.schedule!r} is not one of {', '.join(SCHEDULES)}.")
    if cfg.ddp not in ("minitrain", "torch"):
        raise UserError(f"--ddp={cfg.ddp!r} is not one of minitrain, torch.")
    if not 0.0 <= cfg.dropout < 1.0:
        raise UserError(f"--dropout={cfg.dropout} must be in [0, 1).")


def main(cfg: Config) -> dict:
    check_config(cfg)
    # ------------------------------------------------------------------------------------------
    # setup: processes, device, precision
    d = dist.setup(cfg.device)
    log, cleanups, clean = None, [], False
    try:
        dtype = resolve_dtype(cfg.dtype, d.device)
        out_dir = Path(cfg.out_dir)
        # a checkpoint to continue from, or a run folder that is ours to fill
        resume_path, ckpt = checkpoint.open_run(out_dir, cfg.resume, cfg.overwrite, d)
        if d.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True  # TF32 matmuls: ~8x fp32 on Ampere+
            torch.backends.cudnn.allow_tf32 = True
        dist.print0(f"config: {json.dumps(asdict(cfg))}")

        # --------------------------------------------------------------------------------------
        # data: documents -> tokenizer -> token ids (rank 0 fills the caches, the others reuse them)
        train_docs, val_docs = data.read_documents(cfg.data, cfg.val_fraction)
        for turn in ("main", "others"):
            if (turn == "main") == d.is_main:
                tokenizer, tokenizer_file = get_tokenizer(cfg, train_docs, out_dir, ckpt)
                eot = eot_id(tokenizer)
                train_tokens = data.tokenize_cached(
                    train_docs, tokenizer, eot, cfg.cache_dir, "train"
                )
                val_tokens = data.tokenize_cached(val_docs, tokenizer, eot, cfg.cache_dir, "val")
            dist.barrier(d)

        # --------------------------------------------------------------------------------------
        # model
        raw_model = build_model(cfg, tokenizer, ckpt)
        T = cfg.block_size
        if T > raw_model.config.n_positions:
            raise UserError(
                f"--block_size={T} is larger than the model's {raw_model.config.n_positions} "
                f"positions; use --block_size={raw_model.config.n_positions} or less."
            )
        if tokenizer.get_vocab_size() > raw_model.config.vocab_size:
            raise UserError(
                f"the tokenizer has {tokenizer.get_vocab_size()} tokens but the model only "
                f"{raw_model.config.vocab_size}: they do not belong together."
            )
        raw_model.activation_checkpointing = cfg.activation_checkpointing
        raw_model.to(d.device)
        n_params = raw_model.num_params()
        dist.print0(
            f"model: {n_params / 1e6:.2f}M parameters (non-embedding + tied head), "
            f"{raw_model.config.n_layer} layers, vocab {raw_model.config.vocab_size}"
        )

        # --------------------------------------------------------------------------------------
        # batch arithmetic: values that depend on the world size are computed here and printed
        W, B = d.world_size, cfg.batch_size
        if cfg.tokens_per_step > 0:
            per_micro_step = W * B * T
            if cfg.tokens_per_step % per_micro_step:
                raise UserError(
                    f"--tokens_per_step={cfg.tokens_per_step} is not divisible by "
                    f"world_size x batch_size x block_size = {per_micro_step}."
                )
            grad_accum = cfg.tokens_per_step // per_micro_step
        else:
            grad_accum = cfg.grad_accum_steps
        blocks_per_step = W * B * grad_accum  # the global batch, in sequences
        window_tokens = blocks_per_step * T  # targets per step: every block's T tokens count
        n_train_blocks = data.num_blocks(train_tokens, T)
        n_val_blocks = data.num_blocks(val_tokens, T)
        if n_train_blocks < blocks_per_step:
            raise UserError(
                f"the training split has {n_train_blocks} blocks of {T} tokens, fewer than "
                f"one global batch of {blocks_per_step}: lower --batch_size or --block_size."
            )
        if n_val_blocks == 0:
            raise UserError(f"the validation split is shorter than one block of {T} tokens.")
        steps_per_epoch = n_train_blocks // blocks_per_step
        max_steps = math.ceil(cfg.epochs * steps_per_epoch) if cfg.epochs > 0 else cfg.max_steps
        dist.print0(
            f"batch: {W} processes x {B} sequences x {grad_accum} accumulation = "
            f"{blocks_per_step} sequences = {window_tokens:,} tokens per step; "
            f"{steps_per_epoch} steps per epoch; {max_steps} steps"
        )

        # --------------------------------------------------------------------------------------
        # optimizer, precision, and the training state to resume from
        optimizer = make_optimizer(
            raw_model, cfg.lr, cfg.weight_decay, (cfg.beta1, cfg.beta2), d.device
        )
        scaler = make_scaler(d.device, dtype)
        step, epoch, pos, best_val = 0, 0, 0, float("inf")
        torch.manual_seed(cfg.seed + d.rank)  # dropout differs between ranks, as their data does
        if ckpt is not None:
            optimizer.load_state_dict(ckpt["optimizer"])
            scaler.load_state_dict(ckpt["scaler"])
            step, epoch, pos = ckpt["step"], ckpt["epoch"], ckpt["pos"]
            best_val = ckpt["best_val_loss"]
            rngs = ckpt["rng"]
            if len(rngs) == W:  # same world size: every rank continues its own random stream
                checkpoint.set_rng_state(rngs[d.rank])
            else:
                torch.manual_seed(cfg.seed + d.rank + 1_000_003 * step)
            dist.print0(
                f"resumed from {resume_path} at step {step} (epoch {epoch}, "
                f"{pos} sequences into it)"
            )
        order = data.epoch_order(n_train_blocks, cfg.seed, epoch)

        # compile, then wrap for data parallelism; raw_model stays the one that is saved
        model = torch.compile(raw_model) if cfg.compile else raw_model
        if d.enabled:
            model = wrap(model, cfg.ddp, d.device)

        # --------------------------------------------------------------------------------------
        # evaluation: every rank scores its share of the validation blocks; sums are reduced
        def evaluate() -> float:
            raw_model.eval()
            n_blocks = (
                n_val_blocks
                if cfg.eval_batches == 0
                else min(n_val_blocks, cfg.eval_batches * B * W)
            )
            sums = torch.zeros(2, device=d.device, dtype=torch.float64)  # loss sum, token count
            mine = list(range(d.rank, n_blocks, W))
            with torch.no_grad():
                for i in range(0, len(mine), B):
                    x, y = data.get_batch(val_tokens, mine[i : i + B], T)
                    x, y = x.to(d.device), y.to(d.device)
                    with autocast(d.device, dtype):
                        _, loss_sum = raw_model(x, y, reduction="sum")
                    sums[0] += loss_sum.double()
                    sums[1] += y.numel()
            dist.all_reduce_sum(sums, d)
            raw_model.train()
            return (sums[0] / sums[1]).item()

        def save(val_loss: float) -> None:
            """Rank 0 writes the checkpoint; the RNG states of all ranks go into it."""
            nonlocal best_val
            rngs = checkpoint.gather_rng_states(d)
            is_best = val_loss < best_val
            best_val = min(best_val, val_loss)
            if d.is_main:
                state = {
                    "model": raw_model.state_dict(),
                    "model_config": asdict(raw_model.config),
                    "optimizer": optimizer.state_dict(),
                    "scaler": scaler.state_dict(),
                    "step": step,
                    "epoch": epoch,
                    "pos": pos,
                    "best_val_loss": best_val,
                    "val_loss": val_loss,
                    "rng": rngs,
                    "config": asdict(cfg),
                }
                if not all(torch.isfinite(p).all() for p in raw_model.parameters()):
                    raise UserError("the weights are not finite; no checkpoint was written.")
                path = checkpoint.checkpoint_path(out_dir, step)
                try:
                    checkpoint.save(path, state)
                    if is_best:
                        checkpoint.mark_best(path)
                except OSError as e:
                    raise UserError(
                        f"could not write checkpoint {path} ({e.strerror or e}); the "
                        f"previous checkpoint is kept, and the run stops here."
                    ) from None
                checkpoint.prune(out_dir, cfg.keep_last)
                log.write(f"step {step}: saved {path}")
            dist.barrier(d)

        # --------------------------------------------------------------------------------------
        # the training loop
        log = Logger(
            out_dir, enabled=d.is_main, total=max_steps, initial=step, progress=cfg.progress
        )
        flops_token = flops_per_token(
            n_params, raw_model.config.n_layer, raw_model.config.n_embd, T
        )
        peak = (
            peak_tflops(torch.cuda.get_device_name(d.device)) if d.device.type == "cuda" else None
        )
        stop = dist.StopFlag()
        cleanups.append(stop.close)
        val_loss = evaluate() if step == 0 else ckpt["val_loss"]
        if step == 0:
            log.log(step, val_loss=val_loss, val_perplexity=perplexity(val_loss))
            log.write(f"step 0: val loss {val_loss:.4f}, perplexity {perplexity(val_loss):.1f}")
        first_val_loss = val_loss
        loss_acc = torch.zeros((), device=d.device)  # summed training loss since the last log
        tokens_acc, bad_steps, t0, train_loss = 0, 0, time.perf_counter(), float("nan")
        while step < max_steps and not stop.requested(d):
            # a new epoch when the rest of this one is less than a global batch (the remainder
            # is dropped, the same way on every rank)
            if pos + blocks_per_step > n_train_blocks:
                epoch, pos = epoch + 1, 0
                order = data.epoch_order(n_train_blocks, cfg.seed, epoch)
            lr = lr_at(
                step,
                schedule=cfg.schedule,
                lr=cfg.lr,
                warmup_steps=cfg.warmup_steps,
                total_steps=max_steps,
                min_lr=cfg.min_lr,
            )
            for group in optimizer.param_groups:
                group["lr"] = lr

            # This rank's micro-batches: in micro-step m it takes sequences
            # pos + (m * W + rank) * B ... + B of the epoch's order, so the global batch is the
            # same set of sequences whatever the number of processes.
            batches = []
            for m in range(grad_accum):
                start = pos + (m * W + d.rank) * B
                batches.append(data.get_batch(train_tokens, order[start : start + B].tolist(), T))
            # The loss is a mean over every target token of the whole window (all micro-batches,
            # all ranks), not a mean of per-micro-batch means: then N accumulated micro-batches
            # give exactly the update of one N-times-larger batch, even when micro-batches hold
            # different numbers of targets. Each rank divides its *sum* by that count (here every
            # block is full, so it is window_tokens, fixed above); because gradient averaging
            # divides by W, the sum is multiplied by W first.
            for micro_step, (x, y) in enumerate(batches):
                x = x.to(d.device, non_blocking=True)
                y = y.to(d.device, non_blocking=True)
                last = micro_step == grad_accum - 1
                # no gradient communication until the last micro-step of the window
                sync = contextlib.nullcontext() if (last or not d.enabled) else model.no_sync()
                with sync:
                    with autocast(d.device, dtype):
                        _, loss_sum = model(x, y, reduction="sum")
                    loss = loss_sum * W / window_tokens
                    scaler.scale(loss).backward()  # fp16: scale up so small gradients survive
                loss_acc += loss_sum.detach() / window_tokens * W

            scaler.unscale_(optimizer)  # back to true gradients before measuring their norm
            max_norm = cfg.max_grad_norm if cfg.max_grad_norm > 0 else float("inf")
            grad_norm = torch.nn.utils.clip_grad_norm_(raw_model.parameters(), max_norm)
            finite = bool(torch.isfinite(grad_norm))  # one host sync per step, for the skip below
            if finite or scaler.is_enabled():
                scaler.step(optimizer)  # fp16: the scaler itself skips steps with inf/nan grads
                bad_steps = 0 if finite else bad_steps + 1
            else:
                bad_steps += 1  # bf16/fp32: skip this update, keep the weights as they were
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            pos += blocks_per_step
            tokens_acc += window_tokens
            if bad_steps:
                log.write(
                    f"step {step}: non-finite loss or gradient norm, update skipped "
                    f"({bad_steps} in a row)"
                )
                if bad_steps >= cfg.max_bad_steps:
                    raise UserError(
                        f"{bad_steps} consecutive steps had a non-finite loss or "
                        f"gradient; stopping. The last good checkpoint is in {out_dir}."
                    )

            if step % cfg.log_interval == 0 or step == max_steps:
                # the only other host sync: the logged loss, averaged over steps and ranks
                dist.all_reduce_sum(loss_acc, d)
                n_steps = step % cfg.log_interval or cfg.log_interval
                train_loss = loss_acc.item() / W / n_steps
                loss_acc.zero_()
                dt = time.perf_counter() - t0
                tokens_per_sec = tokens_acc / dt
                row = dict(
                    train_loss=train_loss,
                    lr=lr,
                    grad_norm=grad_norm.item(),
                    tokens_per_sec=tokens_per_sec,
                )
                if peak:
                    row["mfu"] = flops_token * tokens_per_sec / W / (peak * 1e12)
                log.log(step, **row)
                log.progress(
                    n_steps,
                    loss=f"{train_loss:.3f}",
                    lr=f"{lr:.2e}",
                    tok_s=f"{tokens_per_sec:,.0f}",
                )
                tokens_acc, t0 = 0, time.perf_counter()

            if step % cfg.eval_interval == 0 or step == max_steps:
                val_loss = evaluate()
                log.log(step, val_loss=val_loss, val_perplexity=perplexity(val_loss))
                log.write(
                    f"step {step}: train loss {train_loss:.4f}, val loss {val_loss:.4f}, "
                    f"perplexity {perplexity(val_loss):.1f}"
                )
            if step % cfg.save_interval == 0 or step == max_steps:
                save(val_loss)

        if stop.was_requested:
            if step % cfg.save_interval and step != max_steps:
                save(val_loss)
            dist.print0(
                f"stopped by a signal at step {step}; resume with --resume=auto --out_dir={out_dir}"
            )

        # --------------------------------------------------------------------------------------
        # the end: export in the Hugging Face format, then sample
        final_dir = out_dir / "final"
        if d.is_main and not stop.was_requested:
            raw_model.save_pretrained(final_dir)
            write_tokenizer_files(tokenizer_file, final_dir, raw_model.config.n_positions)
            log.write(f"exported the final model to {final_dir}")
            texts = sample_texts(
                raw_model,
                tokenizer,
                cfg.prompt,
                cfg.num_samples,
                cfg.max_new_tokens,
                temperature=cfg.temperature,
                top_k=cfg.top_k,
                top_p=cfg.top_p,
                seed=cfg.seed,
                empty_prompt_id=eot,
            )
            for i, text in enumerate(texts, 1):
                log.write(f"--- sample {i} ---\n{text}")
                log.text(step, f"sample_{i}", text)
        clean = True
        return {
            "step": step,
            "first_val_loss": first_val_loss,
            "val_loss": val_loss,
            "val_perplexity": perplexity(val_loss),
            "train_loss": train_loss,
            "out_dir": str(out_dir),
            "stopped": stop.was_requested,
        }
    finally:
        for cleanup in cleanups:
            cleanup()
        if log is not None:
            log.close()
        dist.teardown(clean)


# ----------------------------------------------------------------------------------------------
# helpers of the script: the run folder, the tokenizer, the model


def get_tokenizer(cfg: Config, train_docs, out_dir: Path, ckpt):
    """The run's tokenizer, saved as out_dir/tokenizer.json so that a resumed run uses the same."""
    saved = out_dir / "tokenizer.json"
    if ckpt is not None and saved.is_file():
        return load_tokenizer(out_dir), saved
    if cfg.init_from != "scratch":
        tok = load_tokenizer(cfg.init_from)  # fine-tuning keeps the checkpoint's tokenizer
    elif cfg.tokenizer:
        tok = load_tokenizer(cfg.tokenizer)
    else:
        key = data.fingerprint(train_docs, cfg.vocab_size)
        cached = Path(cfg.cache_dir).expanduser() / f"bpe-{cfg.vocab_size}-{key}.json"
        if cached.is_file():
            from tokenizers import Tokenizer

            tok = Tokenizer.from_file(str(cached))
        else:
            dist.print0(
                f"training a byte-level BPE with {cfg.vocab_size} tokens on the training text"
            )
            tok = train_bpe(train_docs, cfg.vocab_size, cached)
    out_dir.mkdir(parents=True, exist_ok=True)
    saved.write_text(tok.to_str())
    return tok, saved


def build_model(cfg: Config, tokenizer, ckpt) -> GPT2:
    torch.manual_seed(cfg.seed)  # the same initial weights on every rank and every run
    if cfg.init_from == "scratch":
        eot = tokenizer.token_to_id(EOT)
        model = GPT2(
            GPT2Config(
                vocab_size=tokenizer.get_vocab_size(),
                n_positions=cfg.block_size,
                n_embd=cfg.n_embd,
                n_layer=cfg.n_layer,
                n_head=cfg.n_head,
                embd_pdrop=cfg.dropout,
                attn_pdrop=cfg.dropout,
                resid_pdrop=cfg.dropout,
                bos_token_id=eot,
                eos_token_id=eot,
            )
        )
    else:
        drop = dict(embd_pdrop=cfg.dropout, attn_pdrop=cfg.dropout, resid_pdrop=cfg.dropout)
        model = GPT2.from_pretrained(cfg.init_from, **drop)
    if ckpt is not None:
        saved = GPT2Config(**ckpt["model_config"])
        mine = model.config
        shape = ("vocab_size", "n_positions", "n_embd", "n_layer", "n_head")
        if any(getattr(saved, k) != getattr(mine, k) for k in shape):
            raise UserError(
                f"the checkpoint holds a model of shape "
                f"{ {k: getattr(saved, k) for k in shape} }, but --init_from={cfg.init_from} gives "
                f"{ {k: getattr(mine, k) for k in shape} }; resume with the run's own settings."
            )
        model.load_state_dict(ckpt["model"])
    return model


def write_tokenizer_files(tokenizer_file: Path, folder: Path, max_len: int) -> None:
    """tokenizer.json plus the small config that lets transformers' AutoTokenizer load it."""
    shutil.copyfile(tokenizer_file, folder / "tokenizer.json")
    config = {
        "tokenizer_class": "GPT2TokenizerFast",
        "bos_token": EOT,
        "eos_token": EOT,
        "unk_token": EOT,
        "model_max_length": max_len,
        "add_prefix_space": False,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2))


if __name__ == "__main__":
    run_cli(main, Config)
