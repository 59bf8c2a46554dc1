"""minitrain: a minimal, fast LLM trainer in plain PyTorch.

The two training scripts (`train_gpt2.py`, `train_mrpc.py`) are the lesson; this package is the
small library of plain functions and modules underneath them.
"""

__version__ = "0.1.0"


class UserError(Exception):
    """A problem with what the user asked for: the scripts print it as one sentence and exit 2."""


def first_line(e: BaseException, limit: int = 200) -> str:
    """An exception in a few words for a one-sentence error: its first line, or its type."""
    text = str(e).strip()
    return text.splitlines()[0][:limit] if text else type(e).__name__
