"""THE checkpoint format: one dataclass, `TrainState`, that the scripts fill and read; `save` and
`load` are its only writer and reader, and every other module asks it, never a raw dict.

A checkpoint is plain data (`torch.load(weights_only=True)` accepts it, so loading never runs
code): the run's options, its progress (step, epoch, position in the epoch's order, every
evaluation, the best one), the weights of the unwrapped, uncompiled model (with LoRA only the
trainable tensors), the optimizer, the GradScaler, and every rank's random generators. A sharded
run (FSDP) writes a folder instead: DCP's per-rank files hold the model and optimizer, and
state.pt this TrainState with those two fields empty (training/fsdp.py, training/rundir.py).
"""

import pickle
import random
import zipfile
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np
import torch

from minitrain import UserError, first_line
from minitrain.atomic import atomic_write

FORMAT = 2  # 1: the dicts the scripts wrote before TrainState (still read, see _from_format_1)
SCRIPTS = ("train_gpt2", "train_mrpc")


@dataclass
class TrainState:
    """Everything a run needs to continue exactly, and what the export and `evaluate` read."""

    script: str  # which script wrote it: train_gpt2 or train_mrpc
    config: dict  # the run's options (asdict of the script's Config)
    step: int = 0  # optimizer steps taken
    epoch: int = 0  # the epoch being trained (from 0)
    pos: int = 0  # sequences (pairs) of the epoch's order already trained on, over all ranks
    evals: list[dict] = field(default_factory=list)  # every evaluation: {"step": ..., "val_loss": ..., ...}
    best: dict | None = None  # the evaluation that best.pt holds (the export's), or None
    epoch_loss_sum: float = 0.0  # the training loss of the current epoch so far, summed over its steps
    epoch_steps: int = 0  # ... and those steps
    model_config: dict | None = None  # the architecture, when the script builds its model from it (GPT-2)
    lora: dict | None = None  # the adapters' rank, alpha, targets and the frozen base's checksum
    data: dict | None = None  # the identity of the data the run trains on
    tracking: dict | None = None  # the tracked runs' ids (W&B, MLflow), so that a resumed run continues them
    dtype: str | None = None  # the compute precision the run trained in (bfloat16, float16, float32)
    model: dict = field(default_factory=dict)  # the weights (with LoRA: the trainable tensors only)
    optimizer: dict = field(default_factory=dict)  # AdamW's state_dict
    scaler: dict = field(default_factory=dict)  # GradScaler's state_dict
    rng: list[dict] = field(default_factory=list)  # every rank's random generator states, rank by rank
    format: int = FORMAT

    @property
    def val_loss(self) -> float | None:
        """The latest validation loss (None before the first evaluation)."""
        return self.evals[-1]["val_loss"] if self.evals else None

    def evaluated_at(self, step: int) -> bool:
        """Whether the latest evaluation is of `step` (a checkpoint between evaluations is not)."""
        return bool(self.evals) and self.evals[-1]["step"] == step

    def as_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}  # no copy of the tensors


def save(path, state: TrainState) -> None:
    """torch.save to a temporary file, fsync, rename: a crash never leaves a half file."""
    with atomic_write(path) as f:
        torch.save(state.as_dict(), f)


STATE_FILE = "state.pt"  # in a sharded checkpoint's folder: the TrainState without the tensors


def sharded_folder(path) -> bool:
    """Whether `path` is a sharded (FSDP) checkpoint's folder: its tensors are DCP's files."""
    return (Path(path) / STATE_FILE).is_file()


def load(path, script: str | None = None) -> TrainState:
    """A checkpoint, read with weights_only=True. With `script`, refuse one that another script
    wrote. A checkpoint of an earlier minitrain (format 1) is read into the same TrainState."""
    path = Path(path)
    if sharded_folder(path):
        path = path / STATE_FILE
    if path.is_file() and not zipfile.is_zipfile(path):
        raise UserError(f"{path} is not a checkpoint file (torch.save writes a zip archive; this is none).")
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise UserError(f"checkpoint {path} does not exist.") from None
    except IsADirectoryError:
        raise UserError(f"checkpoint {path} is a folder; pass a ckpt-*.pt file in it.") from None
    except pickle.UnpicklingError:
        raise UserError(
            f"{path} is not a minitrain checkpoint: it holds Python objects that are not plain data, and "
            f"loading those could run code, so it is refused."
        ) from None
    except Exception as e:
        raise UserError(f"{path} is not a checkpoint file ({first_line(e)}).") from None
    if not isinstance(raw, dict) or "model" not in raw or ("step" not in raw and script is not None):
        raise UserError(f"{path} is not a minitrain checkpoint (it has no model and step).")
    state = _from_format_1(raw) if "format" not in raw else _from_dict(raw, path)
    _check_types(state, path)
    if script is not None and state.script != script:
        raise UserError(f"{path} is a {state.script}.py checkpoint; {script}.py cannot resume from it.")
    return state


# what each field of a loaded checkpoint must be (bool is an int in Python: refused where a count belongs)
KINDS = {
    "script": str,
    "config": dict,
    "step": int,
    "epoch": int,
    "pos": int,
    "evals": list,
    "best": (dict, type(None)),
}
KINDS |= {"epoch_loss_sum": (int, float), "epoch_steps": int, "model_config": (dict, type(None))}
KINDS |= {"lora": (dict, type(None)), "data": (dict, type(None)), "model": dict, "optimizer": dict, "scaler": dict}
KINDS |= {"dtype": (str, type(None))}


def _check_types(state: TrainState, path) -> None:
    """A checkpoint's fields with the types TrainState declares (a dict with `step: "5"` or a list
    of weights would fail later with a traceback), every evaluation a dict and every weight a tensor."""
    for name, kind in KINDS.items():
        value = getattr(state, name)
        if not isinstance(value, kind) or (isinstance(value, bool) and kind in (int, (int, float))):
            raise UserError(f"{path} is not a checkpoint this minitrain wrote: its {name} is {type(value).__name__}.")
    if not all(isinstance(e, dict) for e in state.evals) or not isinstance(state.rng, list):
        raise UserError(
            f"{path} is not a checkpoint this minitrain wrote: its evaluations or rng are not lists of dicts."
        )
    if not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.model.items()):
        raise UserError(f"{path} is not a checkpoint this minitrain wrote: its model holds something besides tensors.")


def _from_dict(raw: dict, path) -> TrainState:
    if raw["format"] != FORMAT:
        raise UserError(
            f"{path} has checkpoint format {raw['format']!r}; this minitrain reads formats 1 and {FORMAT}: "
            f"continue it with the minitrain that wrote it."
        )
    names = {f.name for f in fields(TrainState)}
    if set(raw) - names or raw.get("script") not in SCRIPTS:
        unknown = ", ".join(sorted(map(str, set(raw) - names))) or f"script {raw.get('script')!r}"
        raise UserError(f"{path} is not a checkpoint this minitrain wrote (it has {unknown}).")
    return TrainState(**raw)


def _from_format_1(raw: dict) -> TrainState:
    """The dict the scripts saved before TrainState. GPT-2's evaluations were a list of losses
    (their steps were not kept: None); MRPC's were rows with a step already."""
    script = raw.get("script") or ("train_gpt2" if "model_config" in raw else "train_mrpc")
    config, step = raw.get("config") or {}, raw.get("step", 0)
    if script == "train_gpt2":
        history = list(raw.get("val_history") or [])
        evals = [{"step": None, "val_loss": v} for v in history]
        if evals and raw.get("val_loss") == history[-1]:
            evals[-1]["step"] = step  # a checkpoint was written at each evaluation with the defaults
        best_loss = raw.get("best_val_loss", float("inf"))
        best = {"step": None, "val_loss": best_loss} if best_loss < float("inf") else None
    else:
        evals = list(raw.get("history") or [])
        metric = config.get("metric", "accuracy")
        best = max(evals, key=lambda r: -r["val_loss"] if metric == "loss" else r[metric]) if evals else None
    return TrainState(
        script=script,
        config=config,
        step=step,
        epoch=raw.get("epoch", 0),
        pos=raw.get("pos", 0),
        evals=evals,
        best=best,
        epoch_loss_sum=raw.get("epoch_loss_sum", 0.0),
        epoch_steps=raw.get("epoch_steps", 0),
        model_config=raw.get("model_config"),
        lora=raw.get("lora"),
        model=raw["model"],
        optimizer=raw.get("optimizer") or {},
        scaler=raw.get("scaler") or {},
        rng=raw.get("rng") or [],
    )


# ----------------------------------------------------------------------------------------------
# the random generators of every rank


def rng_state() -> dict:
    """The random generators' states as plain Python lists (easy to gather across ranks)."""
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
        "torch": torch.get_rng_state().tolist(),
    }
    if torch.cuda.is_available():
        state["cuda"] = [s.tolist() for s in torch.cuda.get_rng_state_all()]
    return state


def gather_rng_states(world) -> list[dict]:
    """Every rank's RNG states (a collective: all ranks call it), for rank 0 to save."""
    if not world.multi_process:
        return [rng_state()]
    states = [None] * world.world_size
    torch.distributed.all_gather_object(states, rng_state())
    return states


def set_rng_state(state: dict) -> None:
    random.setstate(_as_tuple(state["python"]))
    np_state = state["numpy"]
    np.random.set_state((np_state[0], np.asarray(np_state[1], dtype=np.uint32), *np_state[2:]))
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in state["cuda"]])


def _as_tuple(x):
    return tuple(_as_tuple(v) for v in x) if isinstance(x, (list, tuple)) else x


def restore_training(state: TrainState, optimizer, scaler, world, seed: int, dtype) -> None:
    """A checkpoint's optimizer, loss scaler and random state. With the world size it was saved
    with, every rank continues its own random stream; with another, each rank starts a stream
    seeded by the step (not a replay of the run's first steps). A run resumed in another precision
    (`dtype`) goes on, and says so: its continuation is not the run it would have been; a scaler
    that was off (bf16, fp32) leaves an fp16 run's scaler fresh."""
    name = str(dtype).removeprefix("torch.")
    if state.dtype is not None and state.dtype != name:
        print(f"note: the checkpoint trained in {state.dtype}, this run continues in {name} (--dtype)", flush=True)
    state.dtype = name
    if state.optimizer:  # empty in a sharded checkpoint: training/fsdp.py loads it
        optimizer.load_state_dict(state.optimizer)
    if state.scaler:  # empty when the scaler was off
        scaler.load_state_dict(state.scaler)
    if len(state.rng) == world.world_size:
        set_rng_state(state.rng[world.rank])
    else:
        torch.manual_seed(seed + world.rank + 1_000_003 * state.step)
