"""What each rank holds under --parallel ddp and --parallel fsdp, and what loading a Hugging Face
folder costs each rank, measured with torchrun on CPU (gloo, one thread per process).

    python -m bench.memory                       # SmolLM2-135M's shape, 2 and 4 processes
    python -m bench.memory --procs 2 --rounds 3  # 2 processes only, 3 alternating timing rounds
    python -m bench.memory --smoke               # a tiny shape, 2 processes, one step (the test)

Three measurements, each in fresh torchrun workers (`python -m bench.memory --worker ...`):

1. Model state per rank: the bytes of the parameters, gradients (after a backward) and AdamW state
   (after one step) that this rank holds: a DTensor counts its local shard (`to_local()`). DDP
   (minitrain's hand-written ddp.wrap) also keeps its flat all-reduce buckets, a second copy of the
   gradients, reported apart (`ddp_bucket_bytes`): the issue's ratio is over parameters, gradients
   and optimizer state. Peak process memory is /proc/self/status VmHWM (resident high-water mark):
   over the whole worker, and over the training steps alone (reset through /proc/self/clear_refs
   after the model is built and wrapped, since a model built whole and then sharded, as
   train_gpt2.py does from scratch, holds it whole for a moment). Peak RSS is measured twice: with
   glibc's malloc as it is, and with a fixed mmap threshold (`--allocators`, see ALLOCATORS), since
   the default keeps much of what FSDP's per-block buffers freed.
2. Training tokens/s at the first process count, DDP and FSDP alternated `--rounds` times (best
   round of each): forward, backward, clip, fused AdamW step, as train_gpt2.py's step; median of
   the timed steps after warm-up, rank 0's clock, tokens summed over ranks.
3. Loading: the model is written once to a temporary folder (Llama.save_pretrained); each rank of
   a fresh world then calls Llama.from_pretrained(folder, shard=...) with a shard function that
   calls minitrain.training.fsdp.shard (as train_gpt2.py's build_model does), or the unsharded
   Llama.from_pretrained(folder) for comparison. safetensors are memory-mapped, so pages read from
   the file count in RSS as file-backed pages, shared with the page cache and with the other ranks:
   RssFile. Memory the process owns is RssAnon. Both are reported as increases over loading, their
   peaks sampled every millisecond by a thread, and VmHWM's increase (anon + file).

Writes JSON (default bench/results/memory-DATE.json); the meaning of each field is inside it.
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

from bench.run import SMOLLM2_135M
from bench.train_step import environment, save_result
from minitrain.training.dist import under_torchrun

ROOT = Path(__file__).resolve().parent.parent
MB = 2**20

SMOKE = dict(
    vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, max_position_embeddings=64,
)  # fmt: skip

# glibc's malloc raises its mmap threshold up to 32 MiB as large blocks are freed; after that,
# FSDP's many block-sized buffers (all-gathers, reduce-scatters: ~14 MB each here) come from the
# heap, which fragments and is not given back: RSS then shows what the allocator kept, not what the
# tensors need. A fixed 128 KiB threshold (glibc's default starting value) serves each of them by
# mmap and returns it on free: the second figure.
ALLOCATORS = {"glibc": {}, "mmap128k": {"MALLOC_MMAP_THRESHOLD_": "131072"}}

MEANING = {
    "allocator": "glibc: the default malloc; mmap128k: MALLOC_MMAP_THRESHOLD_=131072 (see bench/memory.py)",
    "param_bytes": "bytes of this rank's parameters (a DTensor's local shard; a tied weight once)",
    "grad_bytes": "bytes of this rank's .grad tensors after a backward (local shards under FSDP)",
    "optimizer_bytes": "bytes of this rank's AdamW state after one step (exp_avg, exp_avg_sq, step)",
    "state_bytes": "param_bytes + grad_bytes + optimizer_bytes: the model state the issue's ratio is about",
    "ddp_bucket_bytes": "DDP's flat all-reduce buffers, kept between steps (not in state_bytes)",
    "rss_start_mb": "VmRSS after imports and joining the process group, before the model exists",
    "peak_rss_mb": "VmHWM at the end: the resident high-water mark of the whole worker",
    "peak_rss_training_mb": "VmHWM over the training steps alone (reset after the model was built and wrapped)",
    "rss_end_mb": "VmRSS after the last step (gradients freed by zero_grad(set_to_none=True))",
    "tokens_per_sec": "world_size * batch * seq / rank 0's median step time",
    "rss_anon_increase_mb": "RssAnon after loading minus before: memory this rank owns because of the load",
    "rss_anon_peak_increase_mb": "highest RssAnon sampled every ~1 ms during the load, minus before",
    "rss_file_peak_increase_mb": "highest RssFile sampled during the load minus before: memory-mapped "
    "checkpoint pages mapped into this rank (page cache: shared between ranks, clean, reclaimable; the "
    "kernel maps pages around each touched one, so a rank maps somewhat more than its slices)",
    "peak_rss_increase_mb": "VmHWM during the load (reset before it) minus VmRSS before: anon + file",
    "full_copy": "true when a rank's peak anon increase reaches 90 % of the model's fp32 bytes",
}


# ----------------------------------------------------------------------------------------------
# measuring inside a worker


def proc_status() -> dict[str, int]:
    """VmRSS, VmHWM, RssAnon, RssFile of this process, in bytes."""
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
                out[key] = int(value.split()[0]) * 1024
    return out


def reset_peak() -> None:
    """VmHWM := VmRSS (Linux: writing 5 to clear_refs resets the peak resident set size)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def local_bytes(tensors) -> int:
    from torch.distributed.tensor import DTensor

    total = 0
    for t in tensors:
        if isinstance(t, torch.Tensor):
            t = t.to_local() if isinstance(t, DTensor) else t
            total += t.numel() * t.element_size()
    return total


class Peaks:
    """Samples RssAnon and RssFile every ~1 ms in a thread (torch's copies release the GIL) and
    keeps the highest of each."""

    def __enter__(self):
        self.anon, self.file, self._stop = 0, 0, threading.Event()
        self._sample()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        s = proc_status()
        self.anon, self.file = max(self.anon, s["RssAnon"]), max(self.file, s["RssFile"])

    def _run(self):
        while not self._stop.is_set():
            self._sample()
            time.sleep(0.001)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self._sample()


def train_worker(kind: str, shape: dict, batch: int, seq: int, warmup: int, steps: int) -> dict:
    """One rank: build, wrap (ddp) or shard (fsdp), train warmup + steps steps; what it held."""
    from minitrain.models.llama import Llama, LlamaConfig
    from minitrain.training import ddp, dist, fsdp
    from minitrain.training.optim import make_optimizer

    world = dist.setup("cpu")
    rss_start = proc_status()["VmRSS"]
    torch.manual_seed(0)
    model = Llama(LlamaConfig(**shape))  # built whole, as train_gpt2.py does from scratch
    if kind == "fsdp":
        net = fsdp.shard(model, world, torch.float32, cpu_offload=False)
    else:
        net = ddp.wrap(model, "minitrain", world)
    optimizer = make_optimizer(model, 1e-4, 0.1, (0.9, 0.95), world.device)
    setup_peak = proc_status()["VmHWM"]  # building (whole), wrapping or sharding
    reset_peak()
    g = torch.Generator().manual_seed(world.rank)
    x = torch.randint(0, shape["vocab_size"], (batch, seq + 1), generator=g)
    x, y = x[:, :-1], x[:, 1:]
    times, held = [], {}
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        _, loss = net(x, y)
        loss.backward()
        if i == 0:
            held["grad_bytes"] = local_bytes(p.grad for p in model.parameters())
        fsdp.full_norm(torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    held["param_bytes"] = local_bytes(model.parameters())
    held["optimizer_bytes"] = local_bytes(v for s in optimizer.state.values() for v in s.values())
    held["state_bytes"] = held["param_bytes"] + held["grad_bytes"] + held["optimizer_bytes"]
    buckets = getattr(net, "buckets", [])  # BucketedDDP's, kept between steps
    held["ddp_bucket_bytes"] = local_bytes(b.buffer for b in buckets)
    status = proc_status()
    row = dict(
        rank=world.rank,
        **held,
        rss_start_mb=round(rss_start / MB, 1),
        peak_rss_mb=round(max(setup_peak, status["VmHWM"]) / MB, 1),
        peak_rss_training_mb=round(status["VmHWM"] / MB, 1),
        rss_end_mb=round(status["VmRSS"] / MB, 1),
        step_s_median=statistics.median(times) if times else None,
    )
    return row


def load_worker(folder: str, sharded: bool) -> dict:
    """One rank: Llama.from_pretrained(folder), sharded or not; what loading cost this rank."""
    from functools import partial

    from minitrain.models.llama import Llama
    from minitrain.training import dist, fsdp

    world = dist.setup("cpu")
    shard = partial(fsdp.shard, world=world, dtype=torch.float32, cpu_offload=False) if sharded else None
    before = proc_status()
    reset_peak()
    t0 = time.perf_counter()
    with Peaks() as peaks:
        model = Llama.from_pretrained(folder, shard=shard)
    seconds = time.perf_counter() - t0
    after = proc_status()
    tied = model.lm_head.weight is model.model.embed_tokens.weight
    return dict(
        rank=world.rank,
        seconds=round(seconds, 2),
        local_param_bytes=local_bytes(model.parameters()),
        tied=tied,
        rss_anon_increase_mb=round((after["RssAnon"] - before["RssAnon"]) / MB, 1),
        rss_anon_peak_increase_mb=round((peaks.anon - before["RssAnon"]) / MB, 1),
        rss_file_peak_increase_mb=round((peaks.file - before["RssFile"]) / MB, 1),
        peak_rss_increase_mb=round((after["VmHWM"] - before["VmRSS"]) / MB, 1),
    )


def worker(args) -> None:
    from minitrain.training import dist

    if args.worker == "train":
        row = train_worker(args.kind, json.loads(args.shape), args.batch, args.seq, args.warmup, args.steps)
    else:
        row = load_worker(args.folder, args.kind == "fsdp")
    rows = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(rows, row)
    dist.print0("RESULT " + json.dumps(rows))
    dist.teardown()


# ----------------------------------------------------------------------------------------------
# the driver: one torchrun per measurement


def torchrun(nproc: int, worker_args: list[str], timeout: int, allocator: str = "glibc") -> list[dict]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), **ALLOCATORS[allocator]}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    cmd += ["-m", "bench.memory", *worker_args]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=timeout)
    lines = [x for x in out.stdout.splitlines() if x.startswith("RESULT ")]
    if out.returncode != 0 or not lines:
        raise RuntimeError(f"memory bench worker {worker_args[:4]} failed:\n{out.stderr[-3000:]}")
    return json.loads(lines[-1].removeprefix("RESULT "))


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--procs", type=int, nargs="+", default=[2, 4], help="process counts (tokens/s at the first)")
    ap.add_argument("--rounds", type=int, default=2, help="alternating DDP/FSDP runs at the first process count")
    ap.add_argument("--batch", type=int, default=1, help="micro-batch per rank, in sequences")
    ap.add_argument("--seq", type=int, default=128, help="sequence length")
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps")
    ap.add_argument("--steps", type=int, default=3, help="timed steps")
    ap.add_argument("--allocators", nargs="+", choices=list(ALLOCATORS), default=list(ALLOCATORS),
                    help="malloc settings to measure peak RSS under (tokens/s under the first)")  # fmt: skip
    ap.add_argument("--no_load", action="store_true", help="skip the loading measurement")
    ap.add_argument("--smoke", action="store_true", help="tiny shape, 2 processes, 1 round of 1 step")
    ap.add_argument("--timeout", type=int, default=900, help="seconds for one torchrun")
    ap.add_argument("--out", default="", help="JSON path (default bench/results/memory-DATE.json)")
    ap.add_argument("--worker", choices=["train", "load"], help=argparse.SUPPRESS)
    ap.add_argument("--kind", choices=["ddp", "fsdp"], help=argparse.SUPPRESS)
    ap.add_argument("--shape", help=argparse.SUPPRESS)
    ap.add_argument("--folder", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        return worker(args)
    shape = dict(SMOLLM2_135M, max_position_embeddings=max(args.seq, 256))
    if args.smoke:
        shape, args.procs, args.rounds, args.warmup, args.steps = SMOKE, [2], 1, 0, 1
        args.allocators = args.allocators[:1]
        args.seq = min(args.seq, SMOKE["max_position_embeddings"])

    from minitrain.models.llama import Llama, LlamaConfig

    with torch.device("meta"):
        n_params = sum(p.numel() for p in Llama(LlamaConfig(**shape)).parameters())
    model_bytes = 4 * n_params
    print(f"Llama {shape['num_hidden_layers']} layers x {shape['hidden_size']}: {n_params / 1e6:.1f}M parameters")

    common = ["--shape", json.dumps(shape), "--batch", str(args.batch), "--seq", str(args.seq)]
    common += ["--warmup", str(args.warmup), "--steps", str(args.steps)]
    state, speed = [], {"ddp": [], "fsdp": []}
    for nproc in args.procs:
        for allocator in args.allocators:
            timed = nproc == args.procs[0] and allocator == args.allocators[0]  # tokens/s from these
            runs = {"ddp": [], "fsdp": []}
            for _ in range(args.rounds if timed else 1):
                for kind in runs:
                    rows = torchrun(nproc, ["--worker", "train", "--kind", kind, *common], args.timeout, allocator)
                    runs[kind].append(rows)
                    tps = nproc * args.batch * args.seq / rows[0]["step_s_median"]
                    print(
                        f"{nproc} processes {kind} ({allocator}): state {rows[0]['state_bytes'] / MB:,.0f} MB/rank, "
                        f"peak RSS {max(r['peak_rss_mb'] for r in rows):,.0f} MB, {tps:,.1f} tokens/s",
                        flush=True,
                    )
                    if timed:
                        speed[kind].append(tps)
            for kind, kind_runs in runs.items():
                state.append(dict(procs=nproc, kind=kind, allocator=allocator, per_rank=kind_runs[0], rounds=kind_runs))

    def worst(nproc, kind, allocator, key):
        runs = [s for s in state if (s["procs"], s["kind"], s["allocator"]) == (nproc, kind, allocator)]
        return max(r[key] for r in runs[0]["per_rank"])

    ratios = {}
    for nproc in args.procs:
        goal = {2: 0.55, 4: 0.3}.get(nproc)
        first = args.allocators[0]
        ratio = worst(nproc, "fsdp", first, "state_bytes") / worst(nproc, "ddp", first, "state_bytes")
        ratios[str(nproc)] = dict(
            state_fsdp_over_ddp=round(ratio, 4), goal=goal, met=None if goal is None else ratio <= goal
        )
        for allocator in args.allocators:
            for key in ("peak_rss_mb", "peak_rss_training_mb"):
                d, f = worst(nproc, "ddp", allocator, key), worst(nproc, "fsdp", allocator, key)
                ratios[str(nproc)][f"{key}_{allocator}"] = dict(ddp=d, fsdp=f, fsdp_over_ddp=round(f / d, 3))
        print(f"{nproc} processes: FSDP / DDP state per rank {ratio:.3f} (goal <= {goal})", flush=True)
    best = {k: max(v) for k, v in speed.items()}
    tokens = dict(procs=args.procs[0], rounds=speed, best=best, fsdp_over_ddp=round(best["fsdp"] / best["ddp"], 3))
    print(f"{args.procs[0]} processes tokens/s: DDP {best['ddp']:,.1f}, FSDP {best['fsdp']:,.1f}")

    loading = []
    if not args.no_load:
        with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp:
            torch.manual_seed(0)
            Llama(LlamaConfig(**shape)).save_pretrained(tmp)
            for nproc in args.procs:
                for kind in ("ddp", "fsdp"):  # ddp: the unsharded from_pretrained
                    rows = torchrun(nproc, ["--worker", "load", "--kind", kind, "--folder", tmp], args.timeout)
                    anon = max(r["rss_anon_peak_increase_mb"] for r in rows)
                    loading.append(
                        dict(
                            procs=nproc,
                            sharded=kind == "fsdp",
                            per_rank=rows,
                            anon_peak_over_model=round(anon * MB / model_bytes, 3),
                            full_copy=anon * MB >= 0.9 * model_bytes,
                        )
                    )
                    print(
                        f"load, {nproc} processes, {'sharded' if kind == 'fsdp' else 'unsharded'}: "
                        f"anon peak +{anon:,.0f} MB, file +{max(r['rss_file_peak_increase_mb'] for r in rows):,.0f} MB "
                        f"per rank (model {model_bytes / MB:,.0f} MB)",
                        flush=True,
                    )

    result = dict(
        bench="memory",
        command="python -m bench.memory " + " ".join(argv if argv is not None else sys.argv[1:]),
        date=time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        environment=environment(),
        machine=dict(cpu=cpu_name(), cores=os.cpu_count(), load_average=os.getloadavg()),
        shape=shape,
        params=n_params,
        model_fp32_mb=round(model_bytes / MB, 1),
        batch=args.batch,
        seq=args.seq,
        warmup=args.warmup,
        steps=args.steps,
        training="fp32, fused AdamW, clip 1.0; OMP_NUM_THREADS=1, gloo, torchrun --standalone",
        meaning=MEANING,
        state=state,
        ratios=ratios,
        tokens_per_sec=tokens,
        loading=loading,
    )
    return save_result(result, args.out, "memory")


if __name__ == "__main__":
    main()
    if under_torchrun():
        os._exit(0)  # skip interpreter finalization under torchrun (see minitrain.cli.run_cli)
