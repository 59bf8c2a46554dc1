"""Train a causal language model on text, from scratch or fine-tuning a Hugging Face checkpoint:
the GPT-2 family and the Llama family (Llama 3.x, Qwen2.5, Qwen3, SmolLM2), one loop for both.

    python train_gpt2.py                                   # the offline default: a small GPT-2
                                                           # from scratch on Shakespeare (CPU ok)
    torchrun --standalone --nproc_per_node=2 train_gpt2.py # the same, data-parallel, 2 processes
    python train_gpt2.py --arch=llama --n_kv_head=2        # a small Llama-shaped model from scratch
    python train_gpt2.py --init_from=gpt2 --data=my.txt    # fine-tune GPT-2 124M on your text
    python train_gpt2.py --init_from=path/to/SmolLM2-135M --data=chats.jsonl  # its chat template
    python train_gpt2.py --init_from=gpt2 --data=sft.jsonl --lora_rank=8  # prompt/completion, LoRA
    python train_gpt2.py --init_from=gpt2 --data=sft.jsonl --packing=false # padded rows instead of packed
    python train_gpt2.py --config configs/gpt2-124m.toml   # GPT-2 124M on FineWeb shards (8 GPUs)
    python train_gpt2.py --max_steps=20 --eval_interval=10 # a CPU smoke run
    python train_gpt2.py --resume=auto                     # continue the run in --out_dir
    python train_gpt2.py --help                            # every option

Features: byte-level BPE trained on the corpus (scratch) or the checkpoint's tokenizer
(fine-tuning); token shards (minitrain.prepare, or prepared in parallel and cached for a text
source) memory-mapped in a seeded order; prompt/completion data with the prompt masked out of the
loss, examples packed into rows with per-example attention; optional document masking of text
at end-of-text; LoRA adapters merged at export; AdamW with decay on matrices only;
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
from minitrain.cli import run_cli
from minitrain.config import Fraction, NonNegativeFloat, NonNegativeInt, PositiveInt, Range, check
from minitrain.data import completions, corpus, packing, sources
from minitrain.data.corpus import open_splits, pick_tokenizer
from minitrain.data.tokenizer import eot_id, save_for_transformers, token_bytes
from minitrain.data.tokens import EpochOrder, accumulation_steps
from minitrain.models import hub, lora, registry
from minitrain.models.gpt2 import GPT2
from minitrain.models.llama import Llama
from minitrain.options import LoRAOptions, OptimOptions, ParallelOptions, RunOptions, SamplingOptions, SystemOptions
from minitrain.training import ddp, dist, fsdp, parallel, report, rundir, tracking
from minitrain.training.batchsize import auto_batch_size, training_blocks
from minitrain.training.evaluate import LMScores
from minitrain.training.logger import Logger
from minitrain.training.metrics import Stopwatch, flops_per_token, peak_tflops, perplexity, stopped_early, throughput
from minitrain.training.optim import lr_at, make_optimizer, report_skipped, step_unless
from minitrain.training.precision import allow_tf32, autocast, choose_dtype, make_scaler
from minitrain.training.sampling import sample_texts
from minitrain.training.state import TrainState


@dataclass
class Config(LoRAOptions, OptimOptions, SystemOptions, ParallelOptions, RunOptions, SamplingOptions):
    """Causal language modelling with GPT-2. Every option is --key=value (or --key value)."""

    # data
    data: str = "shakespeare"  # 'shakespeare', .txt/.jsonl(.gz)/.parquet files, a folder, a glob, hf:NAME, shards
    val_fraction: Annotated[float, Range(gt=0, lt=1)] = 0.1  # share held out for validation (text sources without one)
    val_data: str = ""  # a separate validation source (any kind --data takes); empty: --val_fraction of --data
    cache_dir: str = "~/.cache/minitrain"  # where tokenized data and trained tokenizers are cached
    packing: bool | None = None  # prompt/completion data: pack a micro-batch's examples into rows (auto: on)
    doc_mask: bool = False  # text: attention and positions restart at each <|endoftext|> (off: as GPT-2 trained)
    # model
    init_from: str = "scratch"  # 'scratch', a hub id (gpt2, ...) or a local HF folder (gpt2, llama, qwen2, qwen3)
    arch: Literal["gpt2", "llama"] = "gpt2"  # scratch only: the architecture to build
    tokenizer: str = ""  # scratch only: a tokenizer folder; empty trains a byte-level BPE on the data
    vocab_size: PositiveInt = 2048  # scratch only: size of the BPE vocabulary to train
    n_layer: PositiveInt = 4  # scratch only: transformer blocks
    n_head: PositiveInt = 4  # scratch only: attention heads
    n_kv_head: NonNegativeInt = 0  # scratch llama only: key/value heads (grouped-query attention); 0: n_head
    n_embd: PositiveInt = 128  # scratch only: width of the residual stream
    block_size: PositiveInt = 128  # context length in tokens (at most the model's n_positions)
    dropout: Fraction = 0.0  # dropout on embeddings, attention and residual branches
    activation_checkpointing: bool = False  # recompute activations in backward to save memory
    # batch, steps, schedule (the optimiser's own options are in the optimisation group)
    batch_size: PositiveInt | Literal["auto"] = 16  # micro-batch per process, in sequences (auto: the most that fit)
    grad_accum_steps: PositiveInt = 1  # micro-batches per optimizer step (ignored if tokens_per_step > 0)
    tokens_per_step: NonNegativeInt = 0  # if > 0: tokens per optimizer step; accumulation is derived from it
    max_steps: NonNegativeInt = 1000  # optimizer steps to train for (when epochs is 0)
    epochs: NonNegativeFloat = 0.0  # if > 0: train for this many passes over the training blocks instead
    min_lr: NonNegativeFloat = 2e-4  # the learning rate at the end of the decay
    warmup_steps: NonNegativeInt = 100  # steps of linear warmup from 0 to lr
    # evaluation, checkpoints, export
    eval_interval: PositiveInt = 250  # evaluate every this many steps (and at the end)
    eval_batches: NonNegativeInt = 20  # validation batches per evaluation (0: the whole validation split)
    save_interval: PositiveInt = 250  # write a checkpoint every this many steps (and at the end)
    export: Literal["best", "final"] = "best"  # what final/ holds: the saved step with the lowest val loss, or the last
    out_dir: str = "out/gpt2"


OUTPUTS = (
    "tokenizer.json",
    "tokenizer_config.json",
    "final",
    "report.png",
    "report.md",
)  # what this script writes into out_dir


def main(cfg: Config) -> dict:
    check(cfg)  # each option against what its field declares
    tracking.check(cfg.report_to, cfg.project)  # --report_to's packages and names, before any work
    check_together(cfg)  # options that depend on each other or on the file system, before any work
    with contextlib.ExitStack() as stack:
        # ------------------------------------------------------------------------------------------
        # setup: processes, device, precision, the run folder (locked: one run at a time)
        world = stack.enter_context(dist.process_group(cfg.device, group_of_one=cfg.parallel == "fsdp"))
        out_dir = stack.enter_context(rundir.locked(cfg.out_dir, world))
        dtype, why = choose_dtype(cfg.dtype, world.device)
        dist.print0(f"precision: {str(dtype).removeprefix('torch.')} ({why})")
        allow_tf32(world.device)  # on CUDA: TF32 matmuls, ~8x fp32 on Ampere and later
        # a checkpoint to continue from, or None for a new run; every rank must have the same options
        resume_path, state = rundir.open_run(out_dir, cfg.resume, cfg.overwrite, world, "train_gpt2", cfg.parallel)
        dist.same_everywhere(world, "options", asdict(cfg))
        dist.print0(f"config: {json.dumps(asdict(cfg))}")
        if (
            state
            and not cfg.new_data
            and stopped_early([-e["val_loss"] for e in state.evals], cfg.patience, cfg.min_delta)
        ):
            dist.print0(f"{resume_path}: the run stopped early (--patience={cfg.patience}); nothing left to do.")
            return {"step": state.step, "val_loss": state.val_loss, "stopped_early": True, "out_dir": str(out_dir)}

        # data: a tokenizer, then the source as memory-mapped token shards (a text source is
        # tokenized once, in parallel, and cached: rank 0 does it while the others wait)
        with dist.main_first(world):
            source = sources.resolve(cfg.data)  # what --data is, and its files: worked out once
            val_source = sources.resolve(cfg.val_data, "--val_data") if cfg.val_data else None
            tokenizer = pick_tokenizer(
                resume_path, cfg.init_from, cfg.tokenizer, source, cfg.vocab_size, cfg.val_fraction, cfg.cache_dir
            )
            # how training rows are laid out: examples packed or padded, text split at end-of-text or not
            is_examples, eot = completions.is_completions(source), eot_id(tokenizer)
            layout = packing.Layout(cfg.block_size, cfg.packing, cfg.doc_mask, is_examples, eot)
            train_tokens, val_tokens = open_splits(
                source, tokenizer, cfg.val_fraction, cfg.cache_dir, cfg.progress, val_source, cfg.block_size
            )
        stack.callback(train_tokens.close)  # the shard folders' locks go when the run ends
        stack.callback(val_tokens.close)
        # what the run reads, as the checkpoint records it: every rank must read the same, and a
        # resume continues on the data it started with (or restarts its evaluations: --new_data)
        data = corpus.identity(source, val_source, train_tokens, val_tokens, tokenizer)
        dist.same_everywhere(world, "data", data["fingerprint"])
        if state is not None:
            rundir.check_same_data(state, data, resume_path, cfg.new_data)

        # the model (with LoRA: frozen, adapters on the target layers; lora_info describes them);
        # --parallel fsdp: built on the meta device and loaded straight into each rank's shards
        shard = (lambda m: parallel.parallelize(m, cfg, world, dtype)) if cfg.parallel == "fsdp" else None
        raw_model, lora_info = build_model(cfg, tokenizer, state, shard)
        if not fsdp.is_sharded(raw_model):
            raw_model.to(world.device)
        n_params, c = raw_model.num_params(), raw_model.config
        dist.print0(
            f"model: {n_params / 1e6:.2f}M parameters (no position embedding), {c.n_layer} layers, vocab {c.vocab_size}"
            + (f"; {lora.describe(lora_info)}" if lora_info else "")
        )

        # batch arithmetic: values that depend on the world size are computed here and printed
        W, T = world.world_size, cfg.block_size
        # --batch_size=auto: the largest micro-batch that fits (CUDA); accumulation follows from it
        B = cfg.batch_size
        if B == "auto":
            B = auto_batch_size(raw_model, T, cfg.tokens_per_step, world, dtype)
        grad_accum = accumulation_steps(cfg.tokens_per_step, cfg.grad_accum_steps, W, B, T)
        blocks_per_step = W * B * grad_accum  # the global batch, in sequences
        window_tokens = blocks_per_step * T  # tokens per step (prompt/completion rows: at most)
        n_train_blocks = training_blocks(train_tokens, val_tokens, T, blocks_per_step)
        n_val_blocks = val_tokens.num_blocks(T)
        n_eval_blocks = min(n_val_blocks, cfg.eval_batches * B * W) if cfg.eval_batches else n_val_blocks
        # loss, perplexity, bits/byte; a --doc_mask run's blocks split at end-of-text, as it trains
        validate = LMScores(val_tokens, n_eval_blocks, T, B, token_bytes(tokenizer), layout.eot)
        steps_per_epoch = n_train_blocks // blocks_per_step
        max_steps = math.ceil(cfg.epochs * steps_per_epoch) if cfg.epochs > 0 else cfg.max_steps
        dist.print0(
            f"batch: {W} processes x {B} sequences x {grad_accum} accumulation = "
            f"{blocks_per_step} sequences = {window_tokens:,} tokens per step; "
            f"{steps_per_epoch} steps per epoch; {max_steps} steps"
        )
        dist.print0(f"rows: {layout.describe()}")

        # compile (on CUDA by default, per block), then shard (fsdp) or wrap (ddp) for the processes:
        # `model` is what the loop calls, `raw_model` what is saved (with FSDP, the same object)
        model = raw_model if fsdp.is_sharded(raw_model) else parallel.parallelize(raw_model, cfg, world, dtype)

        # optimizer, precision, and the training state: a new one, or the checkpoint's
        optimizer = make_optimizer(raw_model, cfg.lr, cfg.weight_decay, (cfg.beta1, cfg.beta2), world.device)
        scaler = make_scaler(world.device, dtype)
        torch.manual_seed(cfg.seed + world.rank)  # dropout differs between ranks, as their data does
        if state is None:
            shape, precision = asdict(raw_model.config), str(dtype).removeprefix("torch.")
            state = TrainState(
                "train_gpt2", asdict(cfg), model_config=shape, lora=lora_info, data=data, dtype=precision
            )
        else:  # weights, optimizer moments, loss scale, every rank's random stream (FSDP: its slices)
            rundir.load_step(resume_path, state, raw_model, optimizer, scaler, world, cfg.seed, dtype)
            where = f"step {state.step} (epoch {state.epoch}, {state.pos} sequences into it)"
            dist.print0(f"resumed from {resume_path} at {where}")
        state.config = asdict(cfg)  # the options this part of the run was given
        order = EpochOrder(train_tokens, T, cfg.seed, state.epoch)

        # the run folder is ours now (a new run replaces what an earlier one left), and the logs
        rundir.start_run(out_dir, resume_path, state, OUTPUTS, world)
        if world.is_main:  # the run's tokenizer, for a resume and for the export
            save_for_transformers(tokenizer, out_dir, raw_model.config.n_positions)
        flops_token = flops_per_token(n_params, raw_model.config.n_layer, raw_model.config.n_embd, T)
        peak = peak_tflops(torch.cuda.get_device_name(world.device)) if world.device.type == "cuda" else None
        log = stack.enter_context(Logger(out_dir, world.is_main, max_steps, state.step, cfg.progress, state=state))
        stop = stack.enter_context(dist.StopFlag())

        # ------------------------------------------------------------------------------------------
        # the training loop
        if not state.evals:  # the loss before training (step 0, or the first step on --new_data)
            val = {f"val_{k}": v for k, v in validate(raw_model, world, dtype).items()}
            state.evals.append({"step": state.step, **val})
            log.log(state.step, **val)
            log.write(f"step {state.step}: val {validate.line(val)}")
        first_val_loss, train_loss, stop_early = state.val_loss, float("nan"), False
        # what the next log line reports: the loss summed over its steps, the tokens timed, and the
        # real and computed tokens (rows x their length) for the packing efficiency
        loss_acc, loss_steps, timed_tokens = torch.zeros((), device=world.device), 0, 0
        real_tokens, computed_tokens = 0, 0
        # skipped updates since the last log line, and in a row: device tensors, read when logging
        skipped = torch.zeros((), dtype=torch.long, device=world.device)
        bad_steps = torch.zeros((), device=world.device)
        watch, first_step = Stopwatch(), state.step + 1
        while state.step < max_steps:
            # a new epoch when the rest of this one is less than a global batch (the remainder is
            # dropped, the same way on every rank)
            if state.pos + blocks_per_step > n_train_blocks:
                state.epoch, state.pos = state.epoch + 1, 0
                order = EpochOrder(train_tokens, T, cfg.seed, state.epoch)
            schedule = dict(schedule=cfg.schedule, warmup_steps=cfg.warmup_steps, total_steps=max_steps)
            lr = lr_at(state.step, lr=cfg.lr, min_lr=cfg.min_lr, **schedule)
            for group in optimizer.param_groups:
                group["lr"] = lr

            # This rank's micro-batches: in micro-step m it takes sequences
            # pos + (m * W + rank) * B ... + B of the epoch's order, so the global batch is the same
            # set of sequences whatever the number of processes. On a GPU they are copied now
            # (pinned, asynchronously) while the last step still computes.
            starts = [state.pos + (m * W + world.rank) * B for m in range(grad_accum)]
            batches = [layout.batch(train_tokens, order[s : s + B], world.device) for s in starts]
            # The loss is a mean over every target token of the whole window (all micro-batches,
            # all ranks), not a mean of per-micro-batch means: then N accumulated micro-batches give
            # exactly the update of one N-times-larger batch, even when micro-batches hold different
            # numbers of targets (prompt/completion data: only completion tokens are targets). Each
            # rank divides its *sum* by that count, counted on the device (no host sync); because
            # gradient averaging divides by W, the sum is multiplied by W first.
            window = dist.all_reduce_sum(sum((b.labels != -100).sum() for b in batches), world)
            # tokens/s counts real tokens only (padding is not work done); counted on the host
            real, computed = layout.count(train_tokens, order[state.pos : state.pos + blocks_per_step], B)
            for x, y, doc_ids in ddp.accumulate(model, batches, world.multi_process):  # gradients sync on the last
                with autocast(world.device, dtype):
                    _, loss_sum = model(x, y, reduction="sum", doc_ids=doc_ids)
                scaler.scale(loss_sum * W / window).backward()  # fp16: scale up so small gradients survive
                loss_acc += loss_sum.detach() / window  # this rank's share of the step's mean

            # the optimizer step: true gradients, clipped; a non-finite one skips the update
            scaler.unscale_(optimizer)  # back to true gradients before measuring their norm
            grad_norm = torch.nn.utils.clip_grad_norm_(raw_model.parameters(), cfg.max_grad_norm or math.inf)
            grad_norm = fsdp.full_norm(grad_norm)  # FSDP: the norm over every rank's shards
            skip = ~torch.isfinite(grad_norm)  # stays on the device: no host sync in the step
            if scaler.is_enabled():
                scaler.step(optimizer)  # fp16: the scaler itself skips steps with inf/nan gradients
            else:
                step_unless(optimizer, skip)  # bf16/fp32: the fused kernel skips on the device
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            bad_steps = torch.where(skip, bad_steps + 1, 0)  # consecutive skipped updates
            skipped += skip
            state.step, state.pos = state.step + 1, state.pos + blocks_per_step
            step = state.step
            loss_steps, timed_tokens = loss_steps + 1, timed_tokens + real
            real_tokens, computed_tokens = real_tokens + real, computed_tokens + computed
            if step == first_step:  # torch.compile compiles here: timed apart, not in tokens/s
                if world.device.type == "cuda":
                    torch.cuda.synchronize()
                warmup_s, timed_tokens = watch.lap(), 0
                log.log(step, warmup_s=warmup_s)

            if step % cfg.log_interval == 0 or step == max_steps:
                # the host sync of the loop: the loss (mean over its steps and ranks), norm, skips
                dist.all_reduce_sum(loss_acc, world)
                loss_sum, norm, n_skipped, n_bad = torch.stack([loss_acc, grad_norm, skipped, bad_steps]).tolist()
                train_loss = loss_sum / loss_steps
                report_skipped(log, step, n_skipped, n_bad, loss_steps, cfg.max_bad_steps, out_dir)
                row = dict(train_loss=train_loss, lr=lr, grad_norm=norm, tokens=step * window_tokens)
                row["packing_efficiency"] = real_tokens / computed_tokens  # real tokens / rows x their length
                row |= throughput(timed_tokens, watch.lap(), flops_token, W, peak)  # training time only
                log.log(step, **row)
                tok_s, eff = f"{row.get('tokens_per_sec', 0):,.0f}", f"{row['packing_efficiency']:.0%}"
                log.progress(loss_steps, loss=f"{train_loss:.3f}", lr=f"{lr:.2e}", tok_s=tok_s, eff=eff)
                loss_acc.zero_()
                skipped.zero_()
                loss_steps, timed_tokens, real_tokens, computed_tokens = 0, 0, 0, 0

            # every rank stops at the same step; under torchrun that takes a collective: at log steps
            stopping = step < max_steps and stop.requested(world, sync=step % cfg.log_interval == 0)
            with watch.paused():  # evaluation and checkpoints are not training time
                if step % cfg.eval_interval == 0 or step == max_steps:
                    val = {f"val_{k}": v for k, v in validate(raw_model, world, dtype).items()}
                    state.evals.append({"step": step, **val})
                    log.log(step, **val)
                    log.write(f"step {step}: train loss {train_loss:.4f}, val {validate.line(val)}")
                    # early stopping: the same decision on every rank, as val_loss is all-reduced
                    stop_early = stopped_early([-e["val_loss"] for e in state.evals], cfg.patience, cfg.min_delta)
                if step % cfg.save_interval == 0 or step == max_steps or stopping or stop_early:
                    # only an evaluated step can be the best one (best.pt, and the export)
                    better = state.best is None or state.val_loss < state.best["val_loss"]
                    is_best = state.evaluated_at(step) and better
                    path = rundir.save_step(
                        state, raw_model, optimizer, scaler, out_dir, world, keep_last=cfg.keep_last, is_best=is_best
                    )
                    log.write(f"step {step}: saved {path}")
            if stopping:
                dist.print0(f"stopped by a signal at step {step}; resume with --resume=auto --out_dir={out_dir}")
                break
            if stop_early:
                log.write(
                    f"step {step}: the validation loss has not improved by more than {cfg.min_delta} in "
                    f"{cfg.patience} evaluations (best {min(e['val_loss'] for e in state.evals):.4f}); stopping early."
                )
                break

        # ------------------------------------------------------------------------------------------
        # the end: export in the Hugging Face format, sample, draw the report
        if not stop.was_requested:  # rank 0 (with FSDP every rank helps gather the weights)
            prompts = val_tokens.sample_prompts(cfg.num_samples)  # prompt/completion data: validation prompts
            export_sample_report(raw_model, lora_info, tokenizer, cfg, out_dir, state.step, log, prompts, world)
        return {
            "step": state.step,
            "first_val_loss": first_val_loss,
            "val_loss": state.val_loss,
            "val_perplexity": perplexity(state.val_loss),
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
    if cfg.init_from == "scratch" and cfg.arch == "llama":
        kv = cfg.n_kv_head or cfg.n_head
        if cfg.n_head % kv:
            raise UserError(f"--n_head={cfg.n_head} is not a multiple of --n_kv_head={kv}.")
        if (cfg.n_embd // cfg.n_head) % 2:
            raise UserError(f"--n_embd / --n_head = {cfg.n_embd // cfg.n_head} is odd: RoPE rotates pairs.")
    parallel.check(cfg)  # --parallel fsdp and the options it does not take
    check_writable_folder(cfg.cache_dir, "--cache_dir")
    if cfg.init_from != "scratch":
        registry.check_local(cfg.init_from)  # a family minitrain trains, with a config its model implements


def build_model(cfg: Config, tokenizer, state: TrainState | None, shard=None) -> tuple[GPT2 | Llama, dict | None]:
    """(the model to train, its LoRA description or None): new from --init_from (its config.json's
    model_type picks the class) or --arch, checked against the tokenizer and --block_size and, when
    resuming, against the checkpoint's shape and adapters (its weights are read once the optimizer
    is made: rundir.load_step). With `shard` (FSDP) --init_from is built on the meta device,
    adapters put on, sharded, then each rank's slices filled (lm.build, lora.sharded_adapters)."""
    torch.manual_seed(cfg.seed)  # the same initial weights on every rank and every run
    prepare = None
    if cfg.init_from == "scratch":  # --arch's shape (--n_layer, --n_embd, ...) with the tokenizer's vocabulary
        shape = dict(n_layer=cfg.n_layer, n_head=cfg.n_head, n_kv_head=cfg.n_kv_head, n_embd=cfg.n_embd)
        V, eot = tokenizer.get_vocab_size(), eot_id(tokenizer)
        model = registry.scratch(cfg.arch, V, cfg.block_size, cfg.dropout, eot, **shape)
    else:
        folder = hub.resolve_model_dir(cfg.init_from)
        cls = registry.load_model_class(folder)
        prepare = lora.AdaptThenShard(cfg, shard) if shard else None  # FSDP shards the adapters too
        model = cls.from_pretrained(folder, shard=prepare, **{k: cfg.dropout for k in cls.config_class.DROPOUT})
    registry.check_fits(model, cfg.block_size, tokenizer.get_vocab_size(), cfg.init_from)
    # --lora_rank: frozen model, adapters on the targets (the family's projections by default),
    # initialised from their own seed, so that they start the same however the base was built
    torch.manual_seed(cfg.seed + 1)
    if prepare is not None:
        lora_info = lora.sharded_adapters(model, prepare.info)
    else:
        lora_info = lora.from_options(model, cfg, model.config.model_type)
    if state is not None:  # the checkpoint's weights fit this model (read once the optimizer is made)
        model.config.check_same_shape(registry.config_from_dict(state.model_config), f"--init_from={cfg.init_from}")
        lora.check_resume(lora_info, state.lora)
    model.activation_checkpointing = cfg.activation_checkpointing
    return model, lora_info


def export_sample_report(
    raw_model: GPT2 | Llama, lora_info, tokenizer, cfg: Config, out_dir: Path, step: int, log, prompts, world
):
    """Rank 0 at the end: export --export's weights in the Hugging Face format (final/README.md says
    which step they are; LoRA adapters merged into the weights), sample from them (from the
    validation `prompts` for prompt/completion data), draw the report. A sharded model is first
    gathered, with every rank's help, into a plain one on rank 0's host."""
    sharded = fsdp.is_sharded(raw_model)
    if not (world.is_main or sharded):
        return
    best = rundir.load_best(raw_model, out_dir) if cfg.export == "best" else None
    if sharded:
        raw_model = fsdp.gather_model(raw_model, world, lora_info)
        if not world.is_main:
            return
    what = (
        f"step {best.step} (the lowest validation loss, {best.best['val_loss']:.4f})"
        if best
        else f"step {step} (the last)"
    )
    # LoRA: W + alpha/r B A
    lora.merge_for_export(raw_model, lora_info, cfg.lora_export, cfg.init_from, out_dir / "final/adapters")
    raw_model.save_pretrained(out_dir / "final", tokenizer_dir=out_dir)
    family = raw_model.config.model_type  # gpt2, llama, qwen2, qwen3
    (out_dir / "final/README.md").write_text(
        f"A {family} model trained by minitrain's train_gpt2.py: {what} of {out_dir}.\n"
    )
    log.write(f"exported {what} to {out_dir / 'final'}")
    texts = sample_texts(raw_model, tokenizer, cfg, cfg.seed, empty_prompt_id=eot_id(tokenizer), prompts=prompts)
    for i, text in enumerate(texts, 1):
        log.write(f"--- sample {i} ---\n{text}")
        log.text(step, f"sample_{i}", text)
    report.report_run(out_dir, log.write)


if __name__ == "__main__":
    run_cli(main, Config)
