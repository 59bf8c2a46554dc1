"""Option groups declared once and shared: each script's (and tool's) Config inherits the groups it
takes and adds its own options. A Config may declare a field of a group again to change its default
(`lr: PositiveFloat = 2e-5`); the help text stays the group's (config.field_help follows the bases).

The value sets that several layers name (schedules, precisions, data-parallel kinds) live here too,
so that the training modules and the models can check against them without importing each other.
"""

from dataclasses import dataclass
from typing import Annotated, Literal

from minitrain.config import Fraction, NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt, Range

Schedule = Literal["linear", "cosine", "constant"]  # the learning-rate schedules after warmup
DtypeName = Literal["auto", "bf16", "fp16", "fp32"]  # --dtype: auto picks per device (see precision.resolve_dtype)
DDPKind = Literal["minitrain", "torch"]  # --ddp: the hand-written data parallelism or PyTorch's


@dataclass
class LoRAOptions:
    """LoRA: train low-rank adapters on frozen weights instead of every weight"""

    lora_rank: NonNegativeInt = 0  # rank of the adapters (0: no LoRA, every weight trains)
    lora_alpha: PositiveFloat = 16.0  # the adapters' update is scaled by alpha / rank
    lora_dropout: Fraction = 0.0  # dropout on the adapters' input
    lora_targets: str = "auto"  # comma-separated layer names to adapt (auto: the attention and MLP projections)
    lora_export: Literal["merged", "adapters"] = "merged"  # final/ is merged; adapters: also final/adapters/


@dataclass
class OptimOptions:
    """optimisation"""

    grad_accum_steps: PositiveInt = 1  # micro-batches per optimizer step
    lr: PositiveFloat = 2e-3  # peak learning rate
    schedule: Schedule = "cosine"  # learning-rate schedule after warmup
    weight_decay: NonNegativeFloat = 0.1  # AdamW weight decay, on >= 2-D parameters only
    beta1: Fraction = 0.9  # AdamW beta1
    beta2: Fraction = 0.95  # AdamW beta2
    max_grad_norm: NonNegativeFloat = 1.0  # clip the global gradient norm to this (0 disables clipping)
    max_bad_steps: PositiveInt = 5  # stop after this many consecutive steps with a non-finite loss/grad


@dataclass
class SystemOptions:
    """system"""

    device: str = "auto"  # auto, cpu or cuda
    dtype: DtypeName = "auto"  # auto: bf16 where the hardware computes it (GPU, CPU with AVX-512 BF16/AMX), else fp32
    compile: bool | None = None  # torch.compile: true, false, or auto (on for CUDA, off for CPU)
    compile_scope: Literal["blocks", "model"] = "blocks"  # compile each block apart (regional) or the whole model
    ddp: DDPKind = "minitrain"  # data parallelism under torchrun: minitrain (hand-written) or torch
    seed: int = 1337  # seeds initialisation, data order and dropout


@dataclass
class ParallelOptions:
    """parallelism over processes (under torchrun)"""

    parallel: Literal["ddp", "fsdp"] = "ddp"  # ddp: a full replica per process; fsdp: weights, grads, AdamW sharded
    cpu_offload: bool = False  # fsdp: keep shards, gradients and the optimizer step on the host (CPUOffloadPolicy)


@dataclass
class RunOptions:
    """logging and experiment tracking, checkpoints, the run folder"""

    log_interval: PositiveInt = 10  # log the training loss every this many steps
    progress: bool = True  # show a progress bar
    out_dir: str = "out/run"  # everything the run writes: checkpoints, logs, the exported model
    patience: NonNegativeInt = 0  # stop after this many evaluations without an improvement > min_delta (0: never)
    min_delta: NonNegativeFloat = 0.0  # how much the validation metric must improve to count as an improvement
    keep_last: NonNegativeInt = 2  # keep the newest N step checkpoints (0: all; best.pt is kept as well)
    resume: str = ""  # a checkpoint file to continue from, or 'auto' for the newest in out_dir
    new_data: bool = False  # resume on other data than the checkpoint's (a curriculum): evaluations and best restart
    overwrite: bool = False  # allow starting a new run in an out_dir that holds another run
    report_to: str = "tensorboard"  # trackers that get every metric, comma-separated: tensorboard, wandb, mlflow, none
    run_name: str = ""  # the run's name in W&B and MLflow (empty: out_dir's name)
    project: str = "minitrain"  # the W&B project / MLflow experiment
    log_model: bool = False  # also upload final/ (the exported model) to W&B / MLflow at the end of the run


@dataclass
class SamplingOptions:
    """sampling"""

    prompt: str = "ROMEO:"  # text the samples start from
    num_samples: NonNegativeInt = 2  # samples to generate
    max_new_tokens: NonNegativeInt = 100  # tokens per sample
    temperature: NonNegativeFloat = 0.8  # sampling temperature (0: greedy)
    top_k: NonNegativeInt = 50  # sample among the k most likely tokens (0: all)
    top_p: Annotated[float, Range(gt=0, le=1)] = 1.0  # nucleus sampling: the smallest set with this much probability


Dedup = Literal["none", "exact", "near"]  # --dedup: which copies a prepare removes (see minitrain/data/clean.py)


@dataclass
class CleanOptions:
    """cleaning: copies and quality filters (text only; prompt/completion records are never filtered)"""

    dedup: Dedup = "exact"  # exact: drop a document whose normalised text came before; near: MinHash near copies too
    near_threshold: Annotated[float, Range(gt=0, le=1)] = 0.8  # --dedup near: estimated Jaccard of word 5-grams
    filters: bool = True  # the quality filters below (Gopher-style); false: none of them
    min_words: NonNegativeInt = 50  # fewer words than this: removed (0: off)
    max_non_alpha: Annotated[float, Range(ge=0, le=1)] = 0.3  # more non-letters among non-space characters (1: off)
    max_dup_lines: Annotated[float, Range(ge=0, le=1)] = 0.2  # more characters in repeated lines (1: off)
    max_word_length: NonNegativeFloat = 10.0  # a longer mean word length, in characters: removed (0: off)
