"""The one exit path of every command (the two scripts and the tools): `run_cli(main, Config)`
parses the command line into the dataclass, runs `main`, and turns a UserError (or a file-system
fault, or a CUDA out-of-memory) into one sentence on stderr and exit code 2."""

import os
import sys

from minitrain import UserError
from minitrain.config import parse_args
from minitrain.training.dist import say_once, under_torchrun
from minitrain.training.precision import oom_sentence


def _fail(message: str, code: int) -> None:
    """Print one sentence and exit. Under torchrun, ranks that fail with the very sentence rank 0
    printed stay quiet, so a mistake every rank makes is printed once (see dist.say_once)."""
    if say_once(message):
        print(f"error: {message}", file=sys.stderr, flush=True)
    if under_torchrun():
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)  # no interpreter finalization under torchrun (see the end of run_cli)
    raise SystemExit(code)


def run_cli(main_fn, config_cls=None) -> None:
    """Parse the command line into `config_cls` and run `main_fn` with it (or, without a config
    class, run `main_fn()`, which reads sys.argv itself); a UserError becomes one sentence on stderr
    and exit code 2."""
    try:
        main_fn(parse_args(config_cls)) if config_cls is not None else main_fn()
    except UserError as e:
        _fail(str(e), 2)
    except OSError as e:  # a file-system fault no check could foresee: disk full, a path removed mid-run
        where = f" ({e.filename})" if e.filename else ""
        _fail(f"{e.strerror or e}{where}; the files written so far are complete, and the run stops here.", 2)
    except RuntimeError as e:  # torch.OutOfMemoryError (CUDA): the peak and what to lower
        if type(e).__name__ != "OutOfMemoryError":
            raise
        _fail(oom_sentence(), 2)
    except KeyboardInterrupt:  # Ctrl-C before training started (the loop itself stops cleanly)
        _fail("interrupted (Ctrl-C); nothing was trained, and no file was left half-written.", 130)
    if under_torchrun():
        # Under torchrun, leave without Python's interpreter finalization: gloo's worker threads
        # can abort a process while it is torn down ("terminate called without an active
        # exception", cf. pytorch/pytorch#179291), which would turn a finished run into a failed
        # one. Everything is written, and every rank has passed teardown's barrier (the group is left
        # undestroyed on purpose: see dist.teardown).
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
