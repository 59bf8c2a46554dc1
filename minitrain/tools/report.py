"""python -m minitrain.report: the curves of one or more runs (see minitrain/training/report.py).

python -m minitrain.report out/gpt2                      # out/gpt2/report.png, report.md
python -m minitrain.report out/lr-1e-3 out/lr-2e-3 --out cmp.png   # several runs, overlaid
"""

from dataclasses import dataclass, field
from pathlib import Path

from minitrain import UserError
from minitrain.cli import run_cli
from minitrain.config import check
from minitrain.training.report import write_report


@dataclass
class ReportConfig:
    """Draw report.png and report.md from the metrics.jsonl of run folders."""

    runs: list[str] = field(default_factory=list, metadata={"positional": True})  # run folders (with metrics.jsonl)
    out: str = ""  # the picture to write (default: RUN/report.png for one run, ./report.png for several)


def main(cfg: ReportConfig) -> list[str]:
    check(cfg)
    if not cfg.runs:
        raise UserError("name at least one run folder (one that holds metrics.jsonl).")
    titles = write_report(cfg.runs, cfg.out or None)
    one = Path(cfg.runs[0]) / "report.png" if len(cfg.runs) == 1 else Path("report.png")
    target = Path(cfg.out) if cfg.out else one
    print(f"wrote {target} ({len(titles)} panels) and {target.with_suffix('.md')}")
    return titles


if __name__ == "__main__":
    run_cli(main, ReportConfig)
