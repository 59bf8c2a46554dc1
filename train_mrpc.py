"""Fine-tune BERT for sentence-pair classification: GLUE MRPC (paraphrase or not) by default.

    python train_mrpc.py                                     # bert-base-uncased on GLUE MRPC (hub)
    python train_mrpc.py --data_dir=glue/MRPC                # local train.tsv / dev.tsv / test.tsv
    torchrun --standalone --nproc_per_node=2 train_mrpc.py --data_dir=glue/MRPC
    python train_mrpc.py --model=path/to/bert --data_dir=d --epochs=1 --max_steps=5  # smoke run
    python train_mrpc.py --help                              # every option

Features: GLUE TSV, the original msr_paraphrase_*.txt, or CSV/JSONL sentence pairs (any number of
labels); pair tokenization with the model's own tokenizer through datasets.map; dynamic padding
and optional grouping by length; AdamW (lr 2e-5, decay 0.01) with linear warmup and decay, as in
BERT's paper; clipping; accumulation; bf16 autocast on GPU; data parallelism under torchrun;
validation loss, accuracy and F1 after every epoch (a table, TensorBoard, metrics.jsonl,
report.png); the best epoch by --metric exported in the Hugging Face format; early stopping;
test-set scoring or predictions; exact resume in a locked run folder.
"""

import contextlib
import json
import math
from dataclasses import asdict, dataclass
from typing import Annotated, Literal

import torch

from minitrain import UserError
from minitrain.cli import run_cli
from minitrain.config import Fraction, NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt, Range, check
from minitrain.data import pairs
from minitrain.data.tokenizer import load_tokenizer
from minitrain.data.tokens import to_device
from minitrain.models import hub, lora
from minitrain.models.bert import BertForSequenceClassification
from minitrain.options import LoRAOptions, OptimOptions, RunOptions, Schedule, SystemOptions
from minitrain.training import ddp, dist, evaluate, report, rundir, tracking
from minitrain.training.compile import compile_model
from minitrain.training.logger import Logger
from minitrain.training.metrics import stopped_early
from minitrain.training.optim import lr_at, make_optimizer, report_skipped, step_unless
from minitrain.training.precision import allow_tf32, autocast, choose_dtype, make_scaler
from minitrain.training.state import TrainState


@dataclass
class Config(LoRAOptions, OptimOptions, SystemOptions, RunOptions):
    """BERT sentence-pair classification. Every option is --key=value (or --key value)."""

    # data and model
    model: str = "bert-base-uncased"  # a hub id or a local Hugging Face BERT folder
    data_dir: str = ""  # local MRPC/GLUE files; empty loads GLUE MRPC from the Hugging Face hub
    val_fraction: Annotated[float, Range(gt=0, lt=1)] = 0.1  # share of train held out when there is no dev file
    max_length: Annotated[int, Range(ge=5)] = 128  # longest pair in tokens ([CLS] a [SEP] b [SEP]); longest-first cut
    group_by_length: bool = False  # batch similar lengths together to pad less
    dropout: Fraction | None = None  # if set: replaces the checkpoint's dropout probabilities
    # batch, steps (defaults from BERT's paper and the Hugging Face course)
    batch_size: PositiveInt = 32  # micro-batch per process, in pairs
    epochs: PositiveInt = 3  # passes over the training set
    max_steps: NonNegativeInt = 0  # if > 0: stop after this many optimizer steps (smoke runs)
    warmup_ratio: Fraction = 0.1  # share of all steps spent warming up
    lr: PositiveFloat = 2e-5
    weight_decay: NonNegativeFloat = 0.01
    beta2: Fraction = 0.999
    schedule: Schedule = "linear"
    seed: int = 42
    # evaluation, checkpoints
    eval_batch_size: PositiveInt = 64  # pairs per evaluation batch
    save_interval: NonNegativeInt = 0  # also checkpoint every this many steps (0: at the end of epochs only)
    metric: Literal["accuracy", "f1", "loss"] = "accuracy"  # what makes an epoch the best (the export), and patience
    out_dir: str = "out/mrpc"
    keep_last: NonNegativeInt = 1


OUTPUTS = ("final", "test_predictions.tsv", "report.png", "report.md")  # what this script writes into out_dir


def main(cfg: Config) -> dict:
    check(cfg)
    tracking.check(cfg.report_to, cfg.project)  # --report_to's packages and names, before any work
    hub.check_local_model(cfg.model, "bert")
    with contextlib.ExitStack() as stack:
        # ------------------------------------------------------------------------------------------
        # setup: processes, device, precision, the run folder (locked: one run at a time)
        world = stack.enter_context(dist.process_group(cfg.device))
        out_dir = stack.enter_context(rundir.locked(cfg.out_dir, world))
        dtype, why = choose_dtype(cfg.dtype, world.device)
        dist.print0(f"precision: {str(dtype).removeprefix('torch.')} ({why})")
        allow_tf32(world.device)  # on CUDA: TF32 matmuls, ~8x fp32 on Ampere and later
        # a checkpoint to continue from, or None for a new run; every rank must have the same options
        resume_path, state = rundir.open_run(out_dir, cfg.resume, cfg.overwrite, world, "train_mrpc")
        dist.same_everywhere(world, "options", asdict(cfg))
        dist.print0(f"config: {json.dumps(asdict(cfg))}")
        if state and not cfg.new_data and stopped_early(scores(state.evals, cfg.metric), cfg.patience, cfg.min_delta):
            dist.print0(
                f"{resume_path} is where the run stopped early (--patience={cfg.patience}); nothing left to do."
            )
            return {"step": state.step, "history": state.evals, "stopped_early": True}

        # data: sentence pairs, checked before the model is loaded
        splits = pairs.load_local(cfg.data_dir, cfg.val_fraction) if cfg.data_dir else pairs.load_hub_mrpc()
        num_labels = pairs.count_labels(splits)
        # every rank must read the same pairs, and a resume continues on the pairs it started with
        data = pairs.identity(cfg.data_dir or "GLUE MRPC (hub)", splits)
        dist.same_everywhere(world, "data", data["fingerprint"])
        if state is not None:
            rundir.check_same_data(state, data, resume_path, cfg.new_data)

        # model and tokenizer: the encoder from the checkpoint, a fresh head seeded by --seed
        raw_model, tokenizer, lora_info = build_model(cfg, num_labels, state)
        raw_model.to(world.device)
        if lora_info:
            dist.print0(lora.describe(lora_info))
        pad_id = raw_model.config.pad_token_id
        train = pairs.tokenize_pairs(splits["train"], tokenizer, cfg.max_length)
        val = pairs.tokenize_pairs(splits["validation"], tokenizer, cfg.max_length)
        test = pairs.tokenize_pairs(splits["test"], tokenizer, cfg.max_length) if splits["test"] else None
        pad_to = 8 if world.device.type == "cuda" else 1  # tensor cores like multiples of 8
        dist.print0(
            f"data: {len(train['labels'])} train, {len(val['labels'])} validation, "
            f"{len(test['labels']) if test else 0} test pairs; {num_labels} labels"
        )

        # batch arithmetic (depends on the world size: computed and printed, never stored)
        W, B = world.world_size, cfg.batch_size
        per_step = W * B * cfg.grad_accum_steps  # pairs per optimizer step, over all ranks
        steps_per_epoch = len(train["labels"]) // per_step  # the incomplete last batch is dropped
        if steps_per_epoch == 0:
            raise UserError(
                f"the training set ({len(train['labels'])} pairs) is smaller than one "
                f"global batch of {per_step}: lower --batch_size."
            )
        total_steps = steps_per_epoch * cfg.epochs
        if cfg.max_steps:
            total_steps = min(total_steps, cfg.max_steps)
        warmup_steps = math.ceil(cfg.warmup_ratio * total_steps)
        dist.print0(
            f"batch: {W} processes x {B} pairs x {cfg.grad_accum_steps} accumulation = "
            f"{per_step} pairs per step; {steps_per_epoch} steps per epoch, {total_steps} "
            f"steps, {warmup_steps} of warmup"
        )

        # optimizer, and the training state: a new one, or the checkpoint's
        optimizer = make_optimizer(raw_model, cfg.lr, cfg.weight_decay, (cfg.beta1, cfg.beta2), world.device)
        scaler = make_scaler(world.device, dtype)
        torch.manual_seed(cfg.seed + world.rank)  # dropout differs between ranks
        if state is None:
            precision = str(dtype).removeprefix("torch.")
            state = TrainState("train_mrpc", asdict(cfg), lora=lora_info, data=data, dtype=precision)
        else:  # weights, optimizer moments, loss scale, every rank's random stream
            rundir.load_step(resume_path, state, raw_model, optimizer, scaler, world, cfg.seed, dtype)
            where = f"step {state.step} (epoch {state.epoch + 1}, {state.pos} pairs into it)"
            dist.print0(f"resumed from {resume_path} at {where}")
        state.config = asdict(cfg)  # the options this part of the run was given

        # compile (blocks in place, or the whole model), then wrap for data parallelism; raw_model
        # stays the one that is saved. Compiling helps on CUDA and rarely on CPU: hence auto.
        model = ddp.wrap(compile_model(raw_model, cfg.compile, cfg.compile_scope, world.device), cfg.ddp, world)

        # the run folder is ours now (a new run replaces what an earlier one left), and the logs
        rundir.start_run(out_dir, resume_path, state, OUTPUTS, world)
        log = stack.enter_context(Logger(out_dir, world.is_main, total_steps, state.step, cfg.progress, state=state))
        stop = stack.enter_context(dist.StopFlag())

        # ------------------------------------------------------------------------------------------
        # the training loop: epochs of shuffled pairs, one optimizer step per global batch
        log.write("\n".join([table_header(num_labels)] + [table_row(h, num_labels) for h in state.evals]))
        train_loss, stop_early = float("nan"), False
        # what the next log line reports: the loss summed over its steps; and over the epoch
        loss_acc, loss_steps = torch.zeros((), device=world.device), 0
        # skipped updates since the last log line, and in a row: device tensors, read when logging
        skipped = torch.zeros((), dtype=torch.long, device=world.device)
        bad_steps = torch.zeros((), device=world.device)
        epoch_loss = torch.full((), state.epoch_loss_sum / W, device=world.device)  # summed over ranks when read
        order = None
        while state.step < total_steps:
            if order is None or state.pos == 0:  # a new epoch (or a resumed one): its seeded order
                order = pairs.epoch_order(train, cfg.seed, state.epoch, cfg.group_by_length, B)
            lr = lr_at(state.step, schedule=cfg.schedule, lr=cfg.lr, warmup_steps=warmup_steps, total_steps=total_steps)
            for group in optimizer.param_groups:
                group["lr"] = lr

            # micro-step m of this rank takes pairs pos + (m * W + rank) * B ... + B of the order
            starts = [state.pos + (m * W + world.rank) * B for m in range(cfg.grad_accum_steps)]
            batches = [pairs.collate(train, order[s:][:B], pad_id, pad_to) for s in starts]
            # The loss is the mean over the pairs of the whole window (all micro-batches, all ranks):
            # each rank divides its *sum* by per_step, times W because gradient averaging divides by W.
            for batch in ddp.accumulate(model, batches, world.multi_process):  # gradients sync on the last
                batch = {k: to_device(v, world.device) for k, v in batch.items()}
                with autocast(world.device, dtype):
                    _, loss_sum = model(**batch, reduction="sum")
                scaler.scale(loss_sum * W / per_step).backward()  # fp16: scale up so small gradients survive
                loss_acc += loss_sum.detach() / per_step  # this rank's share of the step's mean
                epoch_loss += loss_sum.detach() / per_step

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
            state.step, state.pos = state.step + 1, state.pos + per_step
            step = state.step
            loss_steps, state.epoch_steps = loss_steps + 1, state.epoch_steps + 1

            if step % cfg.log_interval == 0 or step == total_steps:
                # the host sync of the loop: the loss (mean over its steps and ranks), norm, skips
                dist.all_reduce_sum(loss_acc, world)
                loss_sum, norm, n_skipped, n_bad = torch.stack([loss_acc, grad_norm, skipped, bad_steps]).tolist()
                train_loss = loss_sum / loss_steps
                report_skipped(log, step, n_skipped, n_bad, loss_steps, cfg.max_bad_steps, out_dir)
                log.log(step, train_loss=train_loss, lr=lr, grad_norm=norm)
                log.progress(loss_steps, loss=f"{train_loss:.3f}", lr=f"{lr:.2e}")
                loss_acc.zero_()
                skipped.zero_()
                loss_steps = 0

            # every rank stops at the same step; under torchrun that takes a collective: at log steps
            stopping = step < total_steps and stop.requested(world, sync=step % cfg.log_interval == 0)
            end_of_epoch = state.pos + per_step > len(train["labels"])
            evaluated, is_best = end_of_epoch or step == total_steps, False
            if evaluated:
                metrics, _ = evaluate.classify(
                    raw_model, val, cfg.eval_batch_size, pad_id, pad_to, num_labels, world, dtype
                )
                epoch_train_loss = dist.all_reduce_sum(epoch_loss, world).item() / state.epoch_steps
                row = {"epoch": state.epoch + 1, "step": step, "epoch_train_loss": epoch_train_loss}
                row |= {"val_loss": metrics["loss"], **{k: metrics[k] for k in ("accuracy", "f1", "macro_f1")}}
                epoch_loss.zero_()
                state.epoch_steps = 0
                state.evals.append(row)
                log.log(step, **{k: v for k, v in row.items() if k != "step"})
                log.write(table_row(row, num_labels))
                is_best = state.best is None or score(row, cfg.metric) > score(state.best, cfg.metric)
                stop_early = stopped_early(scores(state.evals, cfg.metric), cfg.patience, cfg.min_delta)
                if end_of_epoch:
                    state.epoch, state.pos = state.epoch + 1, 0
            if evaluated or (cfg.save_interval and step % cfg.save_interval == 0) or stopping:
                state.epoch_loss_sum = dist.all_reduce_sum(epoch_loss.clone(), world).item()
                path = rundir.save_step(
                    state, raw_model, optimizer, scaler, out_dir, world, keep_last=cfg.keep_last, is_best=is_best
                )
                log.write(f"step {step}: saved {path}")
            if stopping:
                dist.print0(f"stopped by a signal at step {step}; resume with --resume=auto --out_dir={out_dir}")
                return {"step": step, "history": state.evals, "stopped": True}
            if stop_early:
                log.write(
                    f"step {step}: the validation {cfg.metric} has not improved by more than {cfg.min_delta} in "
                    f"{cfg.patience} evaluations; stopping early."
                )
                break

        # ------------------------------------------------------------------------------------------
        # the end: the best epoch's model is exported, then scored on the test split
        best_state = rundir.load_best(raw_model, out_dir)
        best = best_state.best if best_state is not None else state.best
        result = {"step": state.step, "history": state.evals, "best": best, "stopped_early": stop_early}
        final_dir = out_dir / "final"  # LoRA: W + alpha/r B A on every rank; rank 0 writes the adapters
        adapters_dir = final_dir / "adapters" if world.is_main else None
        lora.merge_for_export(raw_model, lora_info, cfg.lora_export, cfg.model, adapters_dir)
        if world.is_main:
            raw_model.save_pretrained(final_dir, tokenizer_dir=hub.resolve_model_dir(cfg.model))
            what = (
                f"the best epoch by {cfg.metric} ({best['epoch']})" if best_state else f"step {state.step} (the last)"
            )
            log.write(f"exported {what} to {final_dir}")
        if test is not None:
            result |= score_test(
                raw_model, test, cfg, pad_id, pad_to, num_labels, world, dtype, log, out_dir, state.step
            )
        if world.is_main:
            report.report_run(out_dir, log.write)
        return result


# ----------------------------------------------------------------------------------------------
# helpers of the script: the model, the test split, what "better" means, the epoch table


def build_model(cfg: Config, num_labels: int, state: TrainState | None):
    """(model, tokenizer, LoRA description or None): the encoder from --model with a fresh head
    seeded by --seed, checked against its tokenizer and --max_length and, when resuming, against
    the checkpoint's adapters (its weights are read once the optimizer is made: rundir.load_step)."""
    names = ("hidden_dropout_prob", "classifier_dropout", "attention_probs_dropout_prob")
    overrides = dict.fromkeys(names, cfg.dropout) if cfg.dropout is not None else {}
    folder = hub.resolve_model_dir(cfg.model)
    model = BertForSequenceClassification.from_pretrained(folder, num_labels=num_labels, **overrides)
    model.init_head(torch.Generator().manual_seed(cfg.seed))
    tokenizer = load_tokenizer(folder)
    if tokenizer.get_vocab_size() > model.config.vocab_size:
        raise UserError(
            f"the tokenizer of {cfg.model} has {tokenizer.get_vocab_size()} tokens, "
            f"the model {model.config.vocab_size}: they do not belong together."
        )
    if cfg.max_length > model.config.max_position_embeddings:
        raise UserError(
            f"--max_length={cfg.max_length} is longer than the model's "
            f"{model.config.max_position_embeddings} positions."
        )
    # --lora_rank: freeze the encoder, adapters on the target layers; the head trains fully
    lora_info = lora.from_options(model, cfg, "bert", keep_trainable=("classifier.",))
    if state is not None:  # the checkpoint's adapters, or their absence, fit this model's
        lora.check_resume(lora_info, state.lora)
    return model, tokenizer, lora_info


def score_test(raw_model, test, cfg: Config, pad_id, pad_to, num_labels, world, dtype, log, out_dir, step) -> dict:
    """The exported model on the test split: {"test": its scores} when the split is labelled, else
    its predictions written to out_dir/test_predictions.tsv ({})."""
    metrics, preds = evaluate.classify(raw_model, test, cfg.eval_batch_size, pad_id, pad_to, num_labels, world, dtype)
    if not all(y >= 0 for y in test["labels"]):
        n = evaluate.write_predictions(preds, out_dir / "test_predictions.tsv", world)
        log.write(f"wrote {n} test predictions to {out_dir / 'test_predictions.tsv'}")
        return {}
    result = {k: metrics[k] for k in ("accuracy", "f1", "macro_f1")}
    log.log(step, **{f"test_{k}": v for k, v in result.items()})
    log.write(f"test: accuracy {metrics['accuracy']:.4f}, F1 {metrics['f1']:.4f}")
    return {"test": result}


def scores(history: list[dict], metric: str) -> list[float]:
    """Each evaluation's --metric as a number where higher is better."""
    return [score(r, metric) for r in history]


def score(row: dict, metric: str) -> float:
    """An evaluation row's --metric as a number where higher is better."""
    return -row["val_loss"] if metric == "loss" else row[metric]


def table_header(num_labels: int) -> str:
    extra = "  macro-F1" if num_labels > 2 else ""
    return f"epoch   step  train loss  val loss  accuracy        F1{extra}"


def table_row(r: dict, num_labels: int) -> str:
    extra = f"  {r['macro_f1']:8.4f}" if num_labels > 2 else ""
    return (
        f"{r['epoch']:5d} {r['step']:6d}  {r['epoch_train_loss']:10.4f}  {r['val_loss']:8.4f}  "
        f"{r['accuracy']:8.4f}  {r['f1']:8.4f}{extra}"
    )


if __name__ == "__main__":
    run_cli(main, Config)
