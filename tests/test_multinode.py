"""Two machines, rehearsed on one: two torchrun agents (`--nnodes=2 --nproc_per_node=1`) that meet
through a c10d rendezvous on 127.0.0.1, as two nodes of a cluster meet through the first node's
address (README: "Many machines"). Each test compares the job with a run computed another way."""

import socket
import subprocess

import pytest

from tests.helpers import (
    EQ_RUN,
    PY,
    RESTART_RUN,
    ROOT,
    assert_same_params,
    cli,
    close,
    final_params,
    max_param_diff,
    metrics,
    script_env,
    tiny_gpt2_args,
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def two_nodes(script: str, args: dict, launcher_args=(), env=None, timeout=300) -> list[subprocess.CompletedProcess]:
    """`script` as a job of two nodes of one process each: two torchrun agents started side by
    side with the same rendezvous endpoint and id (what each machine's job script runs)."""
    rdzv = ["--rdzv_backend=c10d", f"--rdzv_endpoint=127.0.0.1:{free_port()}", "--rdzv_id=minitrain-test"]
    cmd = [PY, "-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=1", *rdzv, *launcher_args]
    cmd += [str(ROOT / script), *cli(args)]
    agents = [
        subprocess.Popen(
            cmd, cwd=ROOT, env=script_env(**(env or {})), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    done = []
    try:
        for agent in agents:
            out, err = agent.communicate(timeout=timeout)
            done.append(subprocess.CompletedProcess(cmd, agent.returncode, out, err))
    finally:
        for agent in agents:
            agent.kill()
    for proc in done:
        assert proc.returncode == 0, f"{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    return done


@pytest.mark.xdist_group("shared_run")
@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_two_nodes_equal_one_process(corpus, cache, tmp_path, shared_run, parallel):
    one = shared_run(batch_size=4, grad_accum_steps=1, **EQ_RUN)
    args = tiny_gpt2_args(corpus, tmp_path / "nodes", cache, batch_size=2, parallel=parallel, **EQ_RUN)
    procs = two_nodes("train_gpt2.py", args)
    assert any("2 processes x 2 sequences" in p.stdout for p in procs)
    assert close(metrics(one, "train_loss"), metrics(tmp_path / "nodes", "train_loss"), 1e-6)
    g1, g2 = metrics(one, "grad_norm"), metrics(tmp_path / "nodes", "grad_norm")
    assert all(abs(g1[s] - g2[s]) <= 1e-5 * g1[s] for s in g1)
    assert_same_params(final_params(one), final_params(tmp_path / "nodes"))


@pytest.mark.xdist_group("shared_run")
@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_a_killed_node_worker_restarts_from_the_last_checkpoint(corpus, cache, tmp_path, shared_run, parallel):
    """Rank 1 (the second node's worker) dies on its 8th batch; with --max-restarts both agents
    start their workers again, which continue from the newest complete checkpoint (--resume=auto)
    and end with the uninterrupted job's weights."""
    ref = shared_run(2, parallel=parallel, **RESTART_RUN)
    out, marker = tmp_path / "crashy", tmp_path / "crashed"
    args = tiny_gpt2_args(corpus, out, cache, resume="auto", parallel=parallel, **RESTART_RUN)
    procs = two_nodes("tests/crash_once.py", args, ["--max-restarts=1"], env={"CRASH_MARKER": str(marker)})
    assert marker.exists()  # the worker did die once
    assert any("resumed from" in p.stdout for p in procs)
    assert close(metrics(ref, "train_loss"), metrics(out, "train_loss"), 1e-6)
    assert max_param_diff(final_params(ref), final_params(out)) <= 1e-6
