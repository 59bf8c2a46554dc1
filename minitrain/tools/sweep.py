"""python -m minitrain.sweep: a learning-rate sweep, one short run per value, then the final
validation loss against the learning rate.

    python -m minitrain.sweep --lr 1e-3,2e-3,4e-3 --max_steps 200 -- --n_layer=2 --batch_size=8
    python -m minitrain.sweep --script train_mrpc.py --lr 1e-5,3e-5 -- --data_dir=glue/MRPC --epochs=1
    python -m minitrain.sweep --lr 3e-4,6e-4 --nproc 8 -- ...        # each run under torchrun

The runs use a constant learning rate (`--schedule=constant`, after the script's warmup), the
practice of choosing the rate before the schedule. Options after `--` go to every run, except the
ones the sweep sets for each run (--lr, --out_dir, --schedule, --max_steps, --overwrite, and the
tracking options), which are refused there: each row of the table must describe the run that produced
it (and a row whose folder holds a run of another learning rate says so). Each run writes to
OUT_DIR/lr-VALUE (a repeated sweep needs --overwrite); then OUT_DIR/sweep.png (final validation
loss against the learning rate, log x axis), sweep.md (the table) and report.png (every run's
curves overlaid). A run that fails (a diverged rate stops with exit 2) is listed as failed and
left out of the plot; the sweep goes on.

--report_to, --project and --log_model go to every run. The sweep groups its runs under --run_name
(default: OUT_DIR's name): a W&B group (WANDB_RUN_GROUP, unless set), and an MLflow parent run
that holds sweep.png, sweep.md and sweep.json, with the runs as its children in one store (the
sweep's OUT_DIR/mlflow.db unless MLFLOW_TRACKING_URI is set).
"""

import json
import math
import os
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

from minitrain import UserError
from minitrain.atomic import atomic_write
from minitrain.cli import run_cli
from minitrain.config import NonNegativeInt, PositiveInt, check
from minitrain.training import tracking
from minitrain.training.report import read_metrics, series, write_report
from minitrain.training.rundir import latest
from minitrain.training.state import load

SCRIPTS = ("train_gpt2.py", "train_mrpc.py")
SET_BY_SWEEP = ("lr", "out_dir", "schedule", "overwrite", "max_steps")  # refused after --
TRACKING = ("report_to", "project", "run_name", "log_model")  # sweep options passed to every run: refused after --


@dataclass
class SweepConfig:
    """A constant-learning-rate sweep: one short run of a training script per value."""

    lr: str = ""  # comma-separated learning rates, one run each (required)
    max_steps: NonNegativeInt = 0  # optimizer steps of each run (0: the script's default)
    script: Literal["train_gpt2.py", "train_mrpc.py"] = "train_gpt2.py"  # the training script
    nproc: PositiveInt = 1  # processes per run (torchrun when > 1)
    out_dir: str = "out/sweep"  # each run writes OUT_DIR/lr-VALUE; the sweep's pictures and table go here
    overwrite: bool = False  # replace an earlier sweep's runs in out_dir
    report_to: str = "tensorboard"  # trackers of every run, comma-separated: tensorboard, wandb, mlflow, none
    run_name: str = ""  # the sweep's W&B group / MLflow parent run (empty: out_dir's name); runs are named lr-VALUE
    project: str = "minitrain"  # the W&B project / MLflow experiment
    log_model: bool = False  # each run also uploads final/ (its exported model)
    script_args: list[str] = field(default_factory=list, metadata={"after_dashes": True})  # options for every run


def learning_rates(text: str) -> list[float]:
    if not text:
        raise UserError("--lr is required (comma-separated values, e.g. --lr 1e-3,2e-3).")
    try:
        lrs = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UserError(f"--lr={text!r} is not a comma-separated list of numbers.") from None
    if not lrs or not all(math.isfinite(v) and v > 0 for v in lrs):
        raise UserError(f"--lr={text!r}: every learning rate must be a positive number.")
    return lrs


def check_script_args(args: list[str]) -> None:
    """Options after `--` go to every run; the ones the sweep sets itself would make every row
    describe a run other than the one that produced it, so they are refused."""
    for arg in args:
        name = arg[2:].partition("=")[0].replace("-", "_") if arg.startswith("--") else ""
        if name in SET_BY_SWEEP:
            raise UserError(
                f"{arg} after -- would override what the sweep sets for each run ({', '.join(SET_BY_SWEEP)}); "
                f"give it as a sweep option instead (--lr A,B,C, --max_steps N, --out_dir D, --overwrite)."
            )
        if name in TRACKING:  # each run is named by its folder, in the sweep's group
            raise UserError(f"{arg} after -- is a sweep option: give it before -- (--{name}=...), for every run.")


def command(cfg: SweepConfig, lr: float, out_dir: Path) -> list[str]:
    script = str(Path(__file__).resolve().parent.parent.parent / cfg.script)
    if cfg.nproc > 1:
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={cfg.nproc}"]
    else:
        launcher = [sys.executable]
    args = [f"--lr={lr}", f"--out_dir={out_dir}", "--schedule=constant", f"--overwrite={cfg.overwrite}"]
    args += [f"--report_to={cfg.report_to}", f"--project={cfg.project}", f"--log_model={cfg.log_model}"]
    args.append("--progress=false")
    if cfg.max_steps:
        args.append(f"--max_steps={cfg.max_steps}")
    return launcher + [script] + args + cfg.script_args


def ran_with(run_dir: Path, lr: float) -> bool:
    """Whether the run folder's checkpoint was written by a run with this learning rate (its
    options are in the training state): a row must describe the run that produced it."""
    path = latest(run_dir)
    return path is not None and load(path).config.get("lr") == lr


def main(cfg: SweepConfig) -> list[dict]:
    check(cfg)
    trackers = tracking.check(cfg.report_to, cfg.project)
    lrs = learning_rates(cfg.lr)
    check_script_args(cfg.script_args)
    out = Path(cfg.out_dir)
    used = [out / f"lr-{lr:g}" for lr in lrs if (out / f"lr-{lr:g}" / "metrics.jsonl").exists()]
    if used and not cfg.overwrite:
        raise UserError(
            f"{used[0]} already holds a run; pick another --out_dir, or pass --overwrite to replace the sweep."
        )
    # the runs' group: W&B's WANDB_RUN_GROUP, and an MLflow parent run in a store shared with them
    group, env, parent = cfg.run_name or out.resolve().name, dict(os.environ), None
    if "wandb" in trackers:
        env.setdefault("WANDB_RUN_GROUP", group)
    if "mlflow" in trackers:
        out.mkdir(parents=True, exist_ok=True)
        client, parent, extra = tracking.mlflow_parent(out, group, cfg.project, asdict(cfg))
        env |= extra
    results = []
    for lr in lrs:
        run_dir = out / f"lr-{lr:g}"
        print(f"--- sweep: lr {lr:g} -> {run_dir}", flush=True)
        proc = subprocess.run(command(cfg, lr, run_dir), stderr=subprocess.PIPE, text=True, env=env)
        sys.stderr.write(proc.stderr)
        row = {"lr": lr, "run": str(run_dir), "exit": proc.returncode}
        if proc.returncode == 0 and not ran_with(run_dir, lr):
            row["exit"] = "not this lr"  # the folder does not hold the run this row is about
        elif (run_dir / "metrics.jsonl").is_file():
            rows = read_metrics(run_dir)
            steps, vals = series(rows, "val_loss")
            if vals:
                row |= {"step": steps[-1], "val_loss": vals[-1], "best_val_loss": min(vals)}
            accuracy = series(rows, "accuracy")[1]
            if accuracy:
                row["best_accuracy"] = max(accuracy)
        results.append(row)
    done = [r for r in results if r["exit"] == 0 and "val_loss" in r]
    if done:
        plot(done, out / "sweep.png")
        write_report([r["run"] for r in done], out / "report.png")
    table = ["| lr | final val loss | best val loss | steps | result |", "|---|---|---|---|---|"]
    for r in results:
        status = "ok" if r["exit"] == 0 else f"failed (exit {r['exit']})"
        final, best = r.get("val_loss"), r.get("best_val_loss")
        table.append(
            f"| {r['lr']:g} | {final if final is None else f'{final:.4f}'} | "
            f"{best if best is None else f'{best:.4f}'} | {r.get('step', '-')} | {status} |"
        )
    text = "\n".join(table)
    with atomic_write(out / "sweep.md", "w") as f:
        f.write(f"# Learning-rate sweep ({cfg.script})\n\n![sweep](sweep.png)\n\n{text}\n")
    with atomic_write(out / "sweep.json", "w") as f:
        json.dump(results, f, indent=2)
    print(text)
    if done:
        best = min(done, key=lambda r: r["val_loss"])
        print(f"lowest final validation loss: {best['val_loss']:.4f} at lr {best['lr']:g}; see {out / 'sweep.png'}")
    if parent is not None:  # the sweep's own files on the parent run
        for name in ("sweep.png", "sweep.md", "sweep.json"):
            if (out / name).is_file():
                client.log_artifact(parent, str(out / name))
        client.set_terminated(parent)
        print(f"MLflow: the sweep's runs are children of run {parent} in {env['MLFLOW_TRACKING_URI']}")
    return results


def plot(done: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = sorted(done, key=lambda r: r["lr"])
    fig, ax = plt.subplots(figsize=(6, 4.2))
    ax.plot([r["lr"] for r in done], [r["val_loss"] for r in done], "o-", label="final")
    ax.plot([r["lr"] for r in done], [r["best_val_loss"] for r in done], "s--", alpha=0.6, label="best")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate (log scale)")
    ax.set_ylabel("validation loss (nats)")
    ax.set_title("Learning-rate sweep")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    with atomic_write(path) as f:
        fig.savefig(
            f,
            format="png",
            dpi=90,
            metadata={"Title": "minitrain sweep", "Description": "1 panels: Learning-rate sweep"},
        )
    plt.close(fig)


if __name__ == "__main__":
    run_cli(main, SweepConfig)
