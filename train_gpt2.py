"""Train GPT-2 on text: from scratch, or fine-tuning a Hugging Face checkpoint.

    python train_gpt2.py                                   # the offline default: a small GPT-2
                                                           # from scratch on Shakespeare (CPU ok)
    torchrun --standalone --nproc_per_node=2 train_gpt2.py # the same, data-parallel, 2 processes
    python train_gpt2.py --init_from=gpt2 --data=my.txt    # fine-tune GPT-2 124M on your text
    python train_gpt2.py --init_from=gpt2 --data=sft.jsonl --lora_rank=8  # prompt/completion, LoRA
    python train_gpt2.py --config configs/gpt2-124m.toml   # GPT-2 124M on FineWeb shards (8 GPUs)
    python train_gpt2.py --max_steps=20 --eval_interval=10 # a CPU smoke run
    python train_gpt2.py --resume=auto                     # continue the run in --out_dir
    python train_gpt2.py --help                            # every option

Features: byte-level BPE trained on the corpus (scratch) or the checkpoint's tokenizer
(fine-tuning); token shards (minitrain.prepare, or prepared in parallel and cached for a text
source) memory-mapped in a seeded order; prompt/completion data with the prompt masked out of the
loss; LoRA adapters merged at export; AdamW with decay on matrices only;
linear, cosine or constant schedules with warmup; gradient accumulation normalised by target tokens;
clipping, with non-finite steps skipped on the device; bf16/fp16 autocast (GradScaler for fp16);
torch.compile (on by default on CUDA, per block); a loss that never materialises the logits;
hand-written data parallelism (or PyTorch's DDP with --ddp=torch); validation loss, perplexity and
bits per byte; early stopping; progress bar, TensorBoard, metrics.jsonl and report.png; atomic,
exactly resumable checkpoints in a locked run folder; the best step exported in the Hugging Face
format; sampling.
"""

import contextlib
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated, Literal

import torch

from minitrain import UserError
from minitrain.atomic import check_writable_folder
from minitrain.config import NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt, Range, check, run_cli
from minitrain.data import tokens as data
from minitrain.data.prepare import run_tokenizer, training_data
from minitrain.data.tokenizer import EOT, eot_id, save_for_transformers, token_bytes
from minitrain.models import hub, lora
from minitrain.models.gpt2 import GPT2, GPT2Config
from minitrain.tools.generate import sample_texts
from minitrain.training import checkpoint, dist, evaluate, report
from minitrain.training.ddp import Kind, compile_and_wrap
from minitrain.training.logger import Logger
from minitrain.training.metrics import (
    Stopwatch,
    flops_per_token,
    peak_tflops,
    perplexity,
    stopped_early,
    throughput,
)
from minitrain.training.optim import Schedule, lr_at, make_optimizer, report_skipped, step_unless
from minitrain.training.precision import DtypeName, allow_tf32, auto_batch_size, autocast, make_scaler, resolve_dtype

Fraction = Annotated[float, Range(ge=0, lt=1)]


@dataclass
class Config:
    """Causal language modelling with GPT-2. Every option is --key=value (or --key value)."""

    # data
    data: str = "shakespeare"  # 'shakespeare', .txt/.jsonl(.gz)/.parquet files, a folder, a glob, hf:NAME, shards
    val_fraction: Annotated[float, Range(gt=0, lt=1)] = 0.1  # share held out for validation (text sources without one)
    val_data: str = ""  # a separate validation source (any kind --data takes); empty: --val_fraction of --data
    cache_dir: str = "~/.cache/minitrain"  # where tokenized data and trained tokenizers are cached
    # model
    init_from: str = "scratch"  # 'scratch', a hub id (gpt2, gpt2-medium, ...) or a local HF folder
    tokenizer: str = ""  # scratch only: a tokenizer folder; empty trains a byte-level BPE on the data
    vocab_size: PositiveInt = 2048  # scratch only: size of the BPE vocabulary to train
    n_layer: PositiveInt = 4  # scratch only: transformer blocks
    n_head: PositiveInt = 4  # scratch only: attention heads
    n_embd: PositiveInt = 128  # scratch only: width of the residual stream
    block_size: PositiveInt = 128  # context length in tokens (at most the model's n_positions)
    dropout: Fraction = 0.0  # dropout on embeddings, attention and residual branches
    # LoRA: train low-rank adapters on frozen weights instead of every weight
    lora_rank: NonNegativeInt = 0  # rank of the adapters (0: no LoRA, every weight trains)
    lora_alpha: PositiveFloat = 16.0  # the adapters' update is scaled by alpha / rank
    lora_dropout: Fraction = 0.0  # dropout on the adapters' input
    lora_targets: str = "auto"  # comma-separated layer names to adapt (auto: c_attn, c_proj, c_fc)
    lora_export: Literal["merged", "adapters"] = "merged"  # final/ is merged; adapters: also final/adapters/
    # optimisation
    batch_size: PositiveInt | Literal["auto"] = 16  # micro-batch per process, in sequences (auto: the most that fit)
    grad_accum_steps: PositiveInt = 1  # micro-batches per optimizer step (ignored if tokens_per_step > 0)
    tokens_per_step: NonNegativeInt = 0  # if > 0: tokens per optimizer step; accumulation is derived from it
    max_steps: NonNegativeInt = 1000  # optimizer steps to train for (when epochs is 0)
    epochs: NonNegativeFloat = 0.0  # if > 0: train for this many passes over the training blocks instead
    lr: PositiveFloat = 2e-3  # peak learning rate
    min_lr: NonNegativeFloat = 2e-4  # the learning rate at the end of the decay
    schedule: Schedule = "cosine"  # learning-rate schedule after warmup
    warmup_steps: NonNegativeInt = 100  # steps of linear warmup from 0 to lr
    weight_decay: NonNegativeFloat = 0.1  # AdamW weight decay, on >= 2-D parameters only
    beta1: Fraction = 0.9  # AdamW beta1
    beta2: Fraction = 0.95  # AdamW beta2
    max_grad_norm: NonNegativeFloat = 1.0  # clip the global gradient norm to this (0 disables clipping)
    max_bad_steps: PositiveInt = 5  # stop after this many consecutive steps with a non-finite loss/grad
    # system
    device: str = "auto"  # auto, cpu or cuda
    dtype: DtypeName = "auto"  # auto: bf16 on a GPU that has it, else fp32
    compile: bool | None = None  # torch.compile: true, false, or auto (on for CUDA, off for CPU)
    compile_scope: Literal["blocks", "model"] = "blocks"  # compile each block apart (regional) or the whole model
    activation_checkpointing: bool = False  # recompute activations in backward to save memory
    ddp: Kind = "minitrain"  # data parallelism under torchrun: minitrain (hand-written) or torch
    seed: int = 1337  # seeds initialisation, data order and dropout
    # evaluation, logging, checkpoints
    eval_interval: PositiveInt = 250  # evaluate every this many steps (and at the end)
    eval_batches: NonNegativeInt = 20  # validation batches per evaluation (0: the whole validation split)
    log_interval: PositiveInt = 10  # log the training loss every this many steps
    progress: bool = True  # show a progress bar
    out_dir: str = "out/gpt2"  # everything the run writes: checkpoints, logs, the exported model
    save_interval: PositiveInt = 250  # write a checkpoint every this many steps (and at the end)
    export: Literal["best", "final"] = "best"  # what final/ holds: the saved step with the lowest val loss, or the last
    patience: NonNegativeInt = 0  # stop after this many evaluations without an improvement > min_delta (0: never)
    min_delta: NonNegativeFloat = 0.0  # how much lower the validation loss must get to count as an improvement
    keep_last: NonNegativeInt = 2  # keep the newest N step checkpoints (0: all; best.pt is kept as well)
    resume: str = ""  # a checkpoint file to continue from, or 'auto' for the newest in out_dir
    overwrite: bool = False  # allow starting a new run in an out_dir that holds another run
    # sampling at the end
    prompt: str = "ROMEO:"  # text the samples start from
    num_samples: NonNegativeInt = 2  # samples to generate at the end
    max_new_tokens: NonNegativeInt = 100  # tokens per sample
    temperature: NonNegativeFloat = 0.8  # sampling temperature (0: greedy)
    top_k: NonNegativeInt = 50  # sample among the k most likely tokens (0: all)
    top_p: Annotated[float, Range(gt=0, le=1)] = 1.0  # nucleus sampling: the smallest set with this much probability


OUTPUTS = (
    "tokenizer.json",
    "tokenizer_config.json",
    "final",
    "report.png",
    "report.md",
)  # what this script writes into out_dir


def main(cfg: Config) -> dict:
    check(cfg)  # each option against what its field declares
    check_together(cfg)  # options that depend on each other or on the file system, before any work
    # ------------------------------------------------------------------------------------------
    # setup: processes, device, precision, the run folder (locked: one run at a time)
    with dist.process_group(cfg.device) as d, checkpoint.locked(cfg.out_dir, d) as out_dir:
        dtype = resolve_dtype(cfg.dtype, d.device)
        allow_tf32(d.device)  # on CUDA: TF32 matmuls, ~8x fp32 on Ampere and later
        # a checkpoint to continue from, or None for a new run; every rank must have the same options
        resume_path, ckpt = checkpoint.open_run(out_dir, cfg.resume, cfg.overwrite, d, "train_gpt2")
        dist.same_everywhere(d, "options", asdict(cfg))
        dist.print0(f"config: {json.dumps(asdict(cfg))}")
        if ckpt and stopped_early([-v for v in ckpt["val_history"]], cfg.patience, cfg.min_delta):
            dist.print0(f"{resume_path}: the run stopped early (--patience={cfg.patience}); nothing left to do.")
            return {"step": ckpt["step"], "val_loss": ckpt["val_loss"], "stopped_early": True, "out_dir": str(out_dir)}

        # --------------------------------------------------------------------------------------
        # data: a tokenizer, then the source as memory-mapped token shards (a text source is
        # tokenized once, in parallel, and cached: rank 0 does it while the others wait)
        with dist.main_first(d):
            tokenizer = run_tokenizer(
                resume_path, cfg.init_from, cfg.tokenizer, cfg.data, cfg.vocab_size, cfg.val_fraction, cfg.cache_dir
            )
            eot = eot_id(tokenizer)
            train_tokens, val_tokens = training_data(
                cfg.data, tokenizer, cfg.val_fraction, cfg.cache_dir, cfg.progress, cfg.val_data, cfg.block_size
            )
        dist.same_everywhere(d, "data", data.fingerprint(tokenizer.to_str(), len(train_tokens), len(val_tokens)))

        # --------------------------------------------------------------------------------------
        # model
        raw_model = build_model(cfg, tokenizer, ckpt)
        raw_model.to(d.device)
        n_params = raw_model.num_params()
        c = raw_model.config
        dist.print0(
            f"model: {n_params / 1e6:.2f}M parameters (no position embedding), {c.n_layer} layers, vocab {c.vocab_size}"
            + (f"; {lora.describe(raw_model.lora_info)}" if cfg.lora_rank else "")
        )

        # --------------------------------------------------------------------------------------
        # batch arithmetic: values that depend on the world size are computed here and printed
        W, T = d.world_size, cfg.block_size
        # --batch_size=auto: the largest micro-batch that fits (CUDA); accumulation follows from it
        B = cfg.batch_size if cfg.batch_size != "auto" else auto_batch_size(raw_model, T, cfg.tokens_per_step, d, dtype)
        grad_accum = data.accumulation_steps(cfg.tokens_per_step, cfg.grad_accum_steps, W, B, T)
        blocks_per_step = W * B * grad_accum  # the global batch, in sequences
        window_tokens = blocks_per_step * T  # tokens per step (prompt/completion rows: at most)
        n_train_blocks = train_tokens.num_blocks(T)
        n_val_blocks = val_tokens.num_blocks(T)
        if n_train_blocks < blocks_per_step:
            raise UserError(
                f"the training split has {n_train_blocks} blocks of {T} tokens, fewer than "
                f"one global batch of {blocks_per_step}: lower --batch_size or --block_size."
            )
        if n_val_blocks == 0:
            raise UserError(f"the validation split is shorter than one block of {T} tokens.")
        n_eval_blocks = min(n_val_blocks, cfg.eval_batches * B * W) if cfg.eval_batches else n_val_blocks
        validate = evaluate.LMScores(val_tokens, n_eval_blocks, T, B, token_bytes(tokenizer))  # loss, ppl, bpb
        steps_per_epoch = n_train_blocks // blocks_per_step
        max_steps = math.ceil(cfg.epochs * steps_per_epoch) if cfg.epochs > 0 else cfg.max_steps
        dist.print0(
            f"batch: {W} processes x {B} sequences x {grad_accum} accumulation = "
            f"{blocks_per_step} sequences = {window_tokens:,} tokens per step; "
            f"{steps_per_epoch} steps per epoch; {max_steps} steps"
        )

        # --------------------------------------------------------------------------------------
        # optimizer, precision, and the training state to resume from
        optimizer = make_optimizer(raw_model, cfg.lr, cfg.weight_decay, (cfg.beta1, cfg.beta2), d.device)
        scaler = make_scaler(d.device, dtype)
        step, epoch, pos, best_val, val_history = 0, 0, 0, float("inf"), []
        torch.manual_seed(cfg.seed + d.rank)  # dropout differs between ranks, as their data does
        if ckpt is not None:  # optimizer moments, loss scale, every rank's random stream, data position
            checkpoint.restore_training(ckpt, optimizer, scaler, d, cfg.seed)
            step, epoch, pos, best_val = ckpt["step"], ckpt["epoch"], ckpt["pos"], ckpt["best_val_loss"]
            val_history = ckpt["val_history"]
            dist.print0(f"resumed from {resume_path} at step {step} (epoch {epoch}, {pos} sequences into it)")
        order = data.EpochOrder(train_tokens, T, cfg.seed, epoch)

        # compile (on CUDA by default), then wrap for data parallelism; raw_model stays the one saved
        model = compile_and_wrap(raw_model, cfg.compile, cfg.compile_scope, cfg.ddp, d)

        # --------------------------------------------------------------------------------------
        # the training loop, in a run folder that is ours (a new run replaces what an earlier one left)
        checkpoint.start_run(out_dir, ckpt is None, OUTPUTS, d)
        if d.is_main:  # the run's tokenizer, for a resume and for the export
            save_for_transformers(tokenizer, out_dir, raw_model.config.n_positions)
        flops_token = flops_per_token(n_params, raw_model.config.n_layer, raw_model.config.n_embd, T)
        peak = peak_tflops(torch.cuda.get_device_name(d.device)) if d.device.type == "cuda" else None
        with (
            Logger(out_dir, enabled=d.is_main, total=max_steps, initial=step, progress=cfg.progress) as log,
            dist.StopFlag() as stop,
        ):
            if ckpt is None:
                val = validate(raw_model, d, dtype)
                val_loss, val_history = val["loss"], [val["loss"]]
                log.log(step, **{f"val_{k}": v for k, v in val.items()})
                log.write(f"step 0: val {validate.line(val)}")
            else:
                val_loss = ckpt["val_loss"]
            first_val_loss, train_loss, stop_early = val_loss, float("nan"), False
            # what the next log line reports: the loss summed over its steps, and the tokens timed
            loss_acc, loss_steps, timed_tokens = torch.zeros((), device=d.device), 0, 0
            # skipped updates since the last log line, and in a row: device tensors, read when logging
            skipped, bad_steps = torch.zeros((), dtype=torch.long, device=d.device), torch.zeros((), device=d.device)
            watch, first_step = Stopwatch(), step + 1
            while step < max_steps:
                # a new epoch when the rest of this one is less than a global batch (the remainder
                # is dropped, the same way on every rank)
                if pos + blocks_per_step > n_train_blocks:
                    epoch, pos = epoch + 1, 0
                    order = data.EpochOrder(train_tokens, T, cfg.seed, epoch)
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
                batches = []  # on a GPU, copied now (pinned, asynchronously) while the last step still computes
                for m in range(grad_accum):
                    start = pos + (m * W + d.rank) * B
                    batches.append(data.get_batch(train_tokens, order[start : start + B], T, d.device))
                # The loss is a mean over every target token of the whole window (all micro-batches,
                # all ranks), not a mean of per-micro-batch means: then N accumulated micro-batches
                # give exactly the update of one N-times-larger batch, even when micro-batches hold
                # different numbers of targets (prompt/completion data: only completion tokens are
                # targets). Each rank divides its *sum* by that count, counted on the device (no host
                # sync); because gradient averaging divides by W, the sum is multiplied by W first.
                window = dist.all_reduce_sum(sum((y != -100).sum() for _, y in batches), d)
                for micro_step, (x, y) in enumerate(batches):
                    last = micro_step == grad_accum - 1
                    # no gradient communication until the last micro-step of the window
                    sync = contextlib.nullcontext() if (last or not d.multi_process) else model.no_sync()
                    with sync:
                        with autocast(d.device, dtype):
                            _, loss_sum = model(x, y, reduction="sum")
                        loss = loss_sum * W / window
                        scaler.scale(loss).backward()  # fp16: scale up so small gradients survive
                    loss_acc += loss_sum.detach() / window  # this rank's share of the step's mean

                # the optimizer step: true gradients, clipped; a non-finite one skips the update
                scaler.unscale_(optimizer)  # back to true gradients before measuring their norm
                grad_norm = torch.nn.utils.clip_grad_norm_(raw_model.parameters(), cfg.max_grad_norm or math.inf)
                skip = ~torch.isfinite(grad_norm)  # stays on the device: no host sync in the step
                if scaler.is_enabled():
                    scaler.step(optimizer)  # fp16: the scaler itself skips steps with inf/nan gradients
                else:
                    step_unless(optimizer, skip)  # bf16/fp32: the fused kernel skips on the device
                scaler.update()
                optimizer.zero_grad(set_to_none=True)
                bad_steps = torch.where(skip, bad_steps + 1, 0)  # consecutive skipped updates
                skipped += skip
                step, pos = step + 1, pos + blocks_per_step
                loss_steps, timed_tokens = loss_steps + 1, timed_tokens + window_tokens
                if step == first_step:  # torch.compile compiles here: timed apart, not in tokens/s
                    if d.device.type == "cuda":
                        torch.cuda.synchronize()
                    warmup_s, timed_tokens = watch.lap(), 0
                    log.log(step, warmup_s=warmup_s)

                if step % cfg.log_interval == 0 or step == max_steps:
                    # the host sync of the loop: the loss (mean over its steps and ranks), norm, skips
                    dist.all_reduce_sum(loss_acc, d)
                    loss_sum, norm, n_skipped, n_bad = torch.stack([loss_acc, grad_norm, skipped, bad_steps]).tolist()
                    train_loss = loss_sum / loss_steps
                    report_skipped(log, step, n_skipped, n_bad, loss_steps, cfg.max_bad_steps, out_dir)
                    row = dict(train_loss=train_loss, lr=lr, grad_norm=norm, tokens=step * window_tokens)
                    row |= throughput(timed_tokens, watch.lap(), flops_token, W, peak)  # training time only
                    log.log(step, **row)
                    tok_s = f"{row.get('tokens_per_sec', 0):,.0f}"
                    log.progress(loss_steps, loss=f"{train_loss:.3f}", lr=f"{lr:.2e}", tok_s=tok_s)
                    loss_acc.zero_()
                    skipped.zero_()
                    loss_steps, timed_tokens = 0, 0

                # every rank stops at the same step; under torchrun that takes a collective: at log steps
                stopping = step < max_steps and stop.requested(d, sync=step % cfg.log_interval == 0)
                with watch.paused():  # evaluation and checkpoints are not training time
                    if step % cfg.eval_interval == 0 or step == max_steps:
                        val = validate(raw_model, d, dtype)
                        val_loss = val["loss"]
                        val_history.append(val_loss)
                        log.log(step, **{f"val_{k}": v for k, v in val.items()})
                        log.write(f"step {step}: train loss {train_loss:.4f}, val {validate.line(val)}")
                        # early stopping: the same decision on every rank, as val_loss is all-reduced
                        stop_early = stopped_early([-v for v in val_history], cfg.patience, cfg.min_delta)
                    if step % cfg.save_interval == 0 or step == max_steps or stopping or stop_early:
                        is_best, best_val = val_loss < best_val, min(best_val, val_loss)
                        state = {
                            "script": "train_gpt2",
                            **lora.model_state(raw_model),  # the weights; with LoRA the adapters only
                            "model_config": asdict(raw_model.config),
                            "optimizer": optimizer.state_dict(),
                            "scaler": scaler.state_dict(),
                            "step": step,
                            "epoch": epoch,
                            "pos": pos,
                            "best_val_loss": best_val,
                            "val_loss": val_loss,
                            "val_history": val_history,
                            "config": asdict(cfg),
                        }
                        path = checkpoint.save_step(state, out_dir, step, d, keep_last=cfg.keep_last, is_best=is_best)
                        log.write(f"step {step}: saved {path}")
                if stopping:
                    dist.print0(f"stopped by a signal at step {step}; resume with --resume=auto --out_dir={out_dir}")
                    break
                if stop_early:
                    log.write(
                        f"step {step}: the validation loss has not improved by more than {cfg.min_delta} in "
                        f"{cfg.patience} evaluations (best {min(val_history):.4f}); stopping early."
                    )
                    break

            # ----------------------------------------------------------------------------------
            # the end: export in the Hugging Face format, sample, draw the report
            if d.is_main and not stop.was_requested:
                finish(raw_model, tokenizer, cfg, out_dir, step, eot, log, getattr(val_tokens, "prompts", None))
        return {
            "step": step,
            "first_val_loss": first_val_loss,
            "val_loss": val_loss,
            "val_perplexity": perplexity(val_loss),
            "train_loss": train_loss,
            "out_dir": str(out_dir),
            "stopped": stop.was_requested,
            "stopped_early": stop_early,
        }


# ----------------------------------------------------------------------------------------------
# helpers of the script: checks across options, the model, the end of the run


def check_together(cfg: Config) -> None:
    """The checks no single field can declare: options that depend on each other, and the paths
    that can be checked before any heavy work."""
    if cfg.max_steps == 0 and cfg.epochs == 0:
        raise UserError("nothing to train: set --max_steps or --epochs to a positive number.")
    if cfg.init_from == "scratch" and cfg.n_embd % cfg.n_head:
        raise UserError(
            f"--n_embd={cfg.n_embd} is not divisible by --n_head={cfg.n_head} (each head gets n_embd / n_head)."
        )
    check_writable_folder(cfg.cache_dir, "--cache_dir")
    if cfg.init_from != "scratch":
        hub.check_local_model(cfg.init_from, "gpt2")


def build_model(cfg: Config, tokenizer, ckpt) -> GPT2:
    """The model to train: new from --init_from, checked against the tokenizer and --block_size,
    with a checkpoint's weights when resuming."""
    torch.manual_seed(cfg.seed)  # the same initial weights on every rank and every run
    drop = dict(embd_pdrop=cfg.dropout, attn_pdrop=cfg.dropout, resid_pdrop=cfg.dropout)
    if cfg.init_from == "scratch":
        eot = tokenizer.token_to_id(EOT)
        shape = dict(n_positions=cfg.block_size, n_embd=cfg.n_embd, n_layer=cfg.n_layer, n_head=cfg.n_head)
        config = GPT2Config(vocab_size=tokenizer.get_vocab_size(), **shape, **drop, bos_token_id=eot, eos_token_id=eot)
        model = GPT2(config)
    else:
        model = GPT2.from_pretrained(cfg.init_from, **drop)
    n_positions, vocab_size = model.config.n_positions, model.config.vocab_size
    if cfg.block_size > n_positions:
        raise UserError(
            f"--block_size={cfg.block_size} is larger than the model's {n_positions} positions; "
            f"use --block_size={n_positions} or less."
        )
    if tokenizer.get_vocab_size() > vocab_size:
        raise UserError(
            f"the tokenizer has {tokenizer.get_vocab_size()} tokens but the model only {vocab_size}: "
            f"they do not belong together."
        )
    lora.from_options(model, cfg, "gpt2")  # --lora_rank: freeze the model, adapters on the target layers
    if ckpt is not None:
        model.config.check_same_shape(GPT2Config(**ckpt["model_config"]), f"--init_from={cfg.init_from}")
        lora.load_checkpoint(model, ckpt)
    model.activation_checkpointing = cfg.activation_checkpointing
    return model


def finish(raw_model: GPT2, tokenizer, cfg: Config, out_dir: Path, step: int, eot: int, log, prompts=None) -> None:
    """Rank 0 at the end: export --export's weights in the Hugging Face format (final/README.md says
    which step they are; LoRA adapters merged into the weights), sample from them (from the
    validation prompts for prompt/completion data), draw the report."""
    best = checkpoint.load_best(raw_model, out_dir) if cfg.export == "best" else None
    what = (
        f"step {best['step']} (the lowest validation loss, {best['val_loss']:.4f})"
        if best
        else f"step {step} (the last)"
    )
    lora.merge_for_export(raw_model, cfg.lora_export, cfg.init_from, out_dir / "final/adapters")  # W + alpha/r B A
    raw_model.save_pretrained(out_dir / "final", tokenizer_dir=out_dir)
    (out_dir / "final/README.md").write_text(f"GPT-2 trained by minitrain's train_gpt2.py: {what} of {out_dir}.\n")
    log.write(f"exported {what} to {out_dir / 'final'}")
    prompts = prompts[: cfg.num_samples] if prompts else None  # one sample for each validation prompt
    for i, text in enumerate(sample_texts(raw_model, tokenizer, cfg, empty_prompt_id=eot, prompts=prompts), 1):
        log.write(f"--- sample {i} ---\n{text}")
        log.text(step, f"sample_{i}", text)
    report.report_run(out_dir, log.write)


if __name__ == "__main__":
    run_cli(main, Config)
