"""A learning-rate sweep: one short run per value, then the final validation loss against it.

    python -m minitrain.sweep --lr 1e-3,2e-3,4e-3 --max_steps 200 -- --n_layer=2 --batch_size=8
    python -m minitrain.sweep --script train_mrpc.py --lr 1e-5,3e-5 -- --data_dir=glue/MRPC --epochs=1
    python -m minitrain.sweep --lr 3e-4,6e-4 --nproc 8 -- ...        # each run under torchrun

The runs use a constant learning rate (`--schedule=constant`, after the script's warmup), the
practice of choosing the rate before the schedule; options after `--` go to every run and can
override that. Each run writes to OUT_DIR/lr-VALUE (a repeated sweep needs --overwrite);
then OUT_DIR/sweep.png (final validation loss against the learning rate, log x axis), sweep.md (the
table) and report.png (every run's curves overlaid). A run that fails (a diverged rate stops
with exit 2) is listed as failed and left out of the plot; the sweep goes on.
"""

import json
import math
import subprocess
import sys
from pathlib import Path

from minitrain import UserError
from minitrain.atomic import atomic_write
from minitrain.config import run_cli
from minitrain.training.report import read_metrics, series, write_report

USAGE = (
    "usage: python -m minitrain.sweep --lr A,B,C [--max_steps N] [--script S] [--nproc N] [--out_dir D] "
    "[--overwrite] -- [script options]"
)
SCRIPTS = ("train_gpt2.py", "train_mrpc.py")


def parse(argv: list[str]) -> dict:
    opts = {
        "lr": None,
        "max_steps": None,
        "script": "train_gpt2.py",
        "nproc": "1",
        "out_dir": "out/sweep",
        "overwrite": False,
    }
    rest = []
    if "--" in argv:
        i = argv.index("--")
        argv, rest = argv[:i], argv[i + 1 :]
    it = iter(argv)
    for arg in it:
        if arg == "--overwrite":
            opts["overwrite"] = True
            continue
        key, eq, value = arg.partition("=")
        name = key[2:].replace("-", "_")
        if not key.startswith("--") or name not in opts:
            raise UserError(f"unknown sweep option {arg!r}; {USAGE}")
        value = value if eq else next(it, None)
        if value is None:
            raise UserError(f"{key} needs a value; {USAGE}")
        opts[name] = value
    if not opts["lr"]:
        raise UserError(f"--lr is required (comma-separated values); {USAGE}")
    try:
        lrs = [float(v) for v in opts["lr"].split(",") if v.strip()]
    except ValueError:
        raise UserError(f"--lr={opts['lr']!r} is not a comma-separated list of numbers.") from None
    if not lrs or not all(math.isfinite(v) and v > 0 for v in lrs):
        raise UserError(f"--lr={opts['lr']!r}: every learning rate must be a positive number.")
    if opts["script"] not in SCRIPTS:
        raise UserError(f"--script={opts['script']!r} is not one of {', '.join(SCRIPTS)}.")
    for key in ("max_steps", "nproc"):
        if opts[key] is not None and not (opts[key].isdigit() and int(opts[key]) > 0):
            raise UserError(f"--{key}={opts[key]!r} must be a positive whole number.")
    return {**opts, "lr": lrs, "nproc": int(opts["nproc"]), "rest": rest}


def command(opts: dict, lr: float, out_dir: Path) -> list[str]:
    script = str(Path(__file__).resolve().parent.parent / opts["script"])
    if opts["nproc"] > 1:
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={opts['nproc']}"]
    else:
        launcher = [sys.executable]
    args = [f"--lr={lr}", f"--out_dir={out_dir}", "--schedule=constant", f"--overwrite={opts['overwrite']}"]
    args.append("--progress=false")
    if opts["max_steps"]:
        args.append(f"--max_steps={opts['max_steps']}")
    return launcher + [script] + args + opts["rest"]


def main(argv=None) -> list[dict]:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        raise SystemExit(0 if argv else 2)
    opts = parse(argv)
    out = Path(opts["out_dir"])
    used = [out / f"lr-{lr:g}" for lr in opts["lr"] if (out / f"lr-{lr:g}" / "metrics.jsonl").exists()]
    if used and not opts["overwrite"]:
        raise UserError(
            f"{used[0]} already holds a run; pick another --out_dir, or pass --overwrite to replace the sweep."
        )
    results = []
    for lr in opts["lr"]:
        run_dir = out / f"lr-{lr:g}"
        print(f"--- sweep: lr {lr:g} -> {run_dir}", flush=True)
        proc = subprocess.run(command(opts, lr, run_dir), stderr=subprocess.PIPE, text=True)
        sys.stderr.write(proc.stderr)
        row = {"lr": lr, "run": str(run_dir), "exit": proc.returncode}
        if (run_dir / "metrics.jsonl").is_file():
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
        f.write(f"# Learning-rate sweep ({opts['script']})\n\n![sweep](sweep.png)\n\n{text}\n")
    with atomic_write(out / "sweep.json", "w") as f:
        json.dump(results, f, indent=2)
    print(text)
    if done:
        best = min(done, key=lambda r: r["val_loss"])
        print(f"lowest final validation loss: {best['val_loss']:.4f} at lr {best['lr']:g}; see {out / 'sweep.png'}")
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
    run_cli(main)
