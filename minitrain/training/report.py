"""A run's metrics.jsonl as pictures: report.png (and report.md with the final numbers); the
command line is minitrain/tools/report.py.

Both training scripts write their report at the end of a run. GPT-2 runs get six panels (loss
against steps and against tokens, validation bits per byte, learning rate, gradient norm, tokens/s),
MRPC runs four (loss, accuracy and F1 per epoch, learning rate, gradient norm). Headless: the Agg
backend, no display needed.
"""

import math
import statistics
from pathlib import Path

from minitrain import UserError
from minitrain.atomic import atomic_write
from minitrain.training.logger import read_rows


def read_metrics(run_dir) -> list[dict]:
    """The checked rows of a run's metrics.jsonl (see logger.read_rows: one sentence with file and
    line for anything Logger.log would not have written)."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise UserError(f"{run_dir} has no metrics.jsonl: it is not a minitrain run folder.")
    return read_rows(path)


def series(rows, key, x="step"):
    """(xs, ys) of the rows that have `key` (and `x`)."""
    pts = [(r[x], r[key]) for r in rows if key in r and x in r and isinstance(r[key], (int, float))]
    return [p[0] for p in pts], [p[1] for p in pts]


def kind_of(rows) -> str:
    return "mrpc" if any("accuracy" in r for r in rows) else "gpt2"


def write_report(run_dirs, out_png=None) -> list[str]:
    """Draw the runs' curves into `out_png` (default: the run folder's report.png when there is
    one run) and their final numbers into report.md beside it. Returns the panel titles."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dirs = [Path(p) for p in run_dirs]
    runs = {p: read_metrics(p) for p in run_dirs}
    kinds = {kind_of(rows) for rows in runs.values()}
    if len(kinds) > 1:
        raise UserError("a train_gpt2.py run and a train_mrpc.py run have different curves; report them apart.")
    kind = kinds.pop()
    out_png = Path(out_png) if out_png else (run_dirs[0] / "report.png" if len(run_dirs) == 1 else Path("report.png"))
    names = _labels(run_dirs)
    panels = GPT2_PANELS if kind == "gpt2" else MRPC_PANELS
    cols = 3 if len(panels) > 4 else 2
    rows_n = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows_n, cols, figsize=(6 * cols, 4.2 * rows_n), squeeze=False)
    for ax, (title, draw) in zip(axes.flat, panels):
        for color, (run_dir, rows) in zip(plt.rcParams["axes.prop_cycle"].by_key()["color"] * 10, runs.items()):
            draw(ax, rows, names[run_dir], color)
        ax.set_title(title)
        ax.grid(True, alpha=0.3)
        if ax.has_data():
            ax.legend(fontsize=8)
            _log_scale_if_decades(ax)
        else:
            ax.text(0.5, 0.5, "not logged", ha="center", va="center", transform=ax.transAxes, color="gray")
    for ax in list(axes.flat)[len(panels) :]:
        ax.remove()
    titles = [t for t, _ in panels]
    fig.suptitle(f"minitrain {'GPT-2' if kind == 'gpt2' else 'MRPC'}: {', '.join(names.values())}")
    fig.tight_layout()
    out_png.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(out_png) as f:
        fig.savefig(
            f,
            format="png",
            dpi=90,
            metadata={"Title": "minitrain report", "Description": f"{len(panels)} panels: {'; '.join(titles)}"},
        )
    plt.close(fig)
    table = _gpt2_table if kind == "gpt2" else _mrpc_table
    md = f"# Training report\n\n![report]({out_png.name})\n\n" + table(runs, names) + "\n"
    with atomic_write(out_png.with_suffix(".md"), "w") as f:
        f.write(md)
    return titles


def _labels(run_dirs) -> dict:
    """Short names for the legend: the folder names, or the paths where those repeat."""
    short = [p.name or str(p) for p in run_dirs]
    return dict(zip(run_dirs, short if len(set(short)) == len(short) else [str(p) for p in run_dirs]))


def _log_scale_if_decades(ax) -> None:
    ys = [y for line in ax.get_lines() for y in line.get_ydata() if isinstance(y, float) and y > 0 and math.isfinite(y)]
    if ys and max(ys) / min(ys) >= 10:
        ax.set_yscale("log")


def _line(key, ylabel, x="step", xlabel="step (optimizer steps)", **style):
    def draw(ax, rows, name, color):
        xs, ys = series(rows, key, x)
        if xs:
            ax.plot(xs, ys, color=color, label=name, **style)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)

    return draw


def _loss(ax, rows, name, color):
    xs, ys = series(rows, "train_loss")
    if xs:
        ax.plot(xs, ys, color=color, alpha=0.6, label=f"{name}: train")
    xs, ys = series(rows, "val_loss")
    if xs:
        ax.plot(xs, ys, "o-", color=color, markersize=3, label=f"{name}: validation")
    ax.set_xlabel("step (optimizer steps)")
    ax.set_ylabel("cross-entropy loss (nats)")


def _val_loss_vs_tokens(ax, rows, name, color):
    per_step = [r["tokens"] / r["step"] for r in rows if r.get("tokens") and r.get("step")]
    xs, ys = series(rows, "val_loss")
    if per_step and xs:
        ax.plot([x * per_step[0] for x in xs], ys, "o-", color=color, markersize=3, label=f"{name}: validation")
    ax.set_xlabel("tokens trained on")
    ax.set_ylabel("validation loss (nats per token)")


def _accuracy_f1(ax, rows, name, color):
    xs, ys = series(rows, "accuracy", "epoch")
    if xs:
        ax.plot(xs, ys, "o-", color=color, label=f"{name}: accuracy")
    xs, ys = series(rows, "f1", "epoch")
    if xs:
        ax.plot(xs, ys, "s--", color=color, label=f"{name}: F1")
    ax.set_xlabel("epoch")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_ylabel("validation score (0-1)")


GPT2_PANELS = [
    ("Loss", _loss),
    ("Validation loss against tokens", _val_loss_vs_tokens),
    ("Validation bits per byte", _line("val_bpb", "bits per byte of text", marker="o", markersize=3)),
    ("Learning rate", _line("lr", "learning rate")),
    ("Gradient norm (before clipping)", _line("grad_norm", "global L2 norm")),
    ("Training throughput", _line("tokens_per_sec", "tokens per second")),
]
MRPC_PANELS = [
    ("Loss", _loss),
    ("Accuracy and F1 per epoch", _accuracy_f1),
    ("Learning rate", _line("lr", "learning rate")),
    ("Gradient norm (before clipping)", _line("grad_norm", "global L2 norm")),
]


def _last(rows, key):
    xs, ys = series(rows, key)
    return (xs[-1], ys[-1]) if xs else (None, None)


def _fmt(v, spec=".4f"):
    return "-" if v is None else format(v, spec)


def _gpt2_table(runs, names) -> str:
    lines = [
        "| run | steps | train loss | val loss | best val loss (step) | val perplexity | val bits/byte "
        "| tokens/s (median) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for run_dir, rows in runs.items():
        _, train = _last(rows, "train_loss")
        step, val = _last(rows, "val_loss")
        xs, ys = series(rows, "val_loss")
        best = min(zip(ys, xs)) if ys else (None, None)
        _, bpb = _last(rows, "val_bpb")
        tps = series(rows, "tokens_per_sec")[1]
        ppl = math.exp(min(val, 700)) if val is not None else None
        lines.append(
            f"| {names[run_dir]} | {_fmt(step, 'd')} | {_fmt(train)} | {_fmt(val)} "
            f"| {_fmt(best[0])} ({_fmt(best[1], 'd')}) "
            f"| {_fmt(ppl, '.2f')} | {_fmt(bpb)} | {_fmt(statistics.median(tps) if tps else None, ',.0f')} |"
        )
    return "\n".join(lines)


def _mrpc_table(runs, names) -> str:
    lines = ["| run | epochs | best epoch (accuracy) | accuracy | F1 | val loss |", "|---|---|---|---|---|---|"]
    for run_dir, rows in runs.items():
        epochs = [r for r in rows if "accuracy" in r]
        best = max(epochs, key=lambda r: r["accuracy"]) if epochs else {}
        lines.append(
            f"| {names[run_dir]} | {len(epochs)} | {best.get('epoch', '-')} | {_fmt(best.get('accuracy'))} "
            f"| {_fmt(best.get('f1'))} | {_fmt(best.get('val_loss'))} |"
        )
    return "\n".join(lines)


def report_run(out_dir, log=print) -> None:
    """The end of a training run: its report, or one line saying why there is none."""
    try:
        write_report([out_dir])
        log(f"wrote {Path(out_dir) / 'report.png'} and report.md")
    except ImportError:
        log("matplotlib is not installed: no report.png (pip install matplotlib)")
