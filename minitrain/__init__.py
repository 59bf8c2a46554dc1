"""minitrain: a minimal, fast LLM trainer in plain PyTorch.

The two training scripts (`train_gpt2.py`, `train_mrpc.py`) are the lesson; this package is the
small library of plain functions and modules underneath them.
"""

__version__ = "0.1.0"


class UserError(Exception):
    """A problem with what the user asked for: the scripts print it as one sentence and exit 2."""
