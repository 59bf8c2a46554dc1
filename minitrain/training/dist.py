"""Processes under torchrun: the process group, the device, rank helpers.

torchrun sets RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT for every process it starts;
without them we are a single process and no process group is created.
"""

import atexit
import contextlib
import os
import signal
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from minitrain import UserError

_STORE = None  # torchrun's key-value store, which outlives a failed collective (see say_once)


@dataclass
class Dist:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def multi_process(self) -> bool:
        """More than one process: gradients, metrics and decisions must be shared."""
        return self.world_size > 1


def pick_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UserError("--device=cuda was asked for, but this machine has no usable CUDA GPU.")
        return torch.device("cuda", local_rank if name == "cuda" else int(name.split(":")[1]))
    if name == "mps" and torch.backends.mps.is_available():
        return torch.device("mps")
    if name != "cpu":
        raise UserError(f"--device={name!r} is not available here; use auto, cpu or cuda.")
    return torch.device("cpu")


def setup(device: str = "auto", group_of_one: bool = False) -> Dist:
    """Join the process group torchrun describes (if any) and pick this process's device. Outside
    torchrun, `group_of_one` makes a process group of this one process (FSDP and DCP need one)."""
    if not under_torchrun():
        dev = pick_device(device)
        if group_of_one and not dist.is_initialized():
            backend = "nccl" if dev.type == "cuda" else "gloo"
            dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
        return Dist(device=dev)
    rank, local_rank = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
    world_size = int(os.environ["WORLD_SIZE"])
    dev = pick_device(device, local_rank)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        # nccl moves CUDA tensors between GPUs; gloo works on CPU tensors.
        backend = "nccl" if dev.type == "cuda" else "gloo"
        # torchrun's store outlives a restart (--max-restarts), and the previous round's keys
        # (the dead workers' addresses) can be read by the new round before they are replaced
        # (pytorch/pytorch#167288). A key prefix per round keeps the rounds apart. The round is
        # counted in the store itself, by each rank: TORCHELASTIC_RESTART_COUNT is per node, and
        # on several nodes only the failed node's agent counts a restart, so it differs.
        store, _, _ = next(dist.rendezvous("env://"))
        round_ = store.add(f"minitrain/starts/rank{rank}", 1)
        store = dist.PrefixStore(f"minitrain/round{round_}", store)
        global _STORE
        _STORE = store
        dist.init_process_group(
            backend,
            store=store,
            rank=rank,
            world_size=world_size,
            device_id=dev if dev.type == "cuda" else None,
        )
    return Dist(rank, local_rank, world_size, dev)


@contextlib.contextmanager
def process_group(device: str = "auto", group_of_one: bool = False):
    """`with process_group(cfg.device) as d:` joins torchrun's process group (if any) and leaves
    it at the end: after waiting for every rank when the body finished, at once after an error."""
    world = setup(device, group_of_one)
    try:
        yield world
    except BaseException:
        teardown(clean=False)
        raise
    teardown(clean=True)


@contextlib.contextmanager
def main_first(world: Dist):
    """Run the body on rank 0 first, then on the other ranks: rank 0 fills the caches (trained
    tokenizer, token files) that the others then find, instead of every rank computing them."""
    if not world.is_main:
        barrier(world)
    yield
    if world.is_main:
        barrier(world)


def teardown(clean: bool = True) -> None:
    """Leave the process group. After a clean run, wait for every rank first: tearing gloo down
    while another rank still talks to it can abort the process. After an error, do not wait
    (the other ranks may never arrive); torchrun stops them.

    Under torchrun the group is not destroyed: the process leaves by os._exit right after
    (cli.run_cli). Destroying it can hang the process: gloo's destructor joins its worker thread
    while holding the GIL, and a worker still freeing the last collective's tensors waits for the
    GIL. The destructor runs when the last holder of the group goes -- torch's DDP (its reducer)
    and FSDP hold it too, and are freed after this -- so the hang came at random: about 1 run in
    30 with --ddp=torch on this 2-core CPU. Outside torchrun (group_of_one) the group is destroyed,
    so that the process can make another."""
    if dist.is_initialized():
        if clean:
            dist.barrier()
        if not under_torchrun():
            dist.destroy_process_group()


def under_torchrun() -> bool:
    """Whether torchrun started this process (it sets RANK, WORLD_SIZE, ... for every worker)."""
    return "RANK" in os.environ


def say_once(message: str, wait_s: float = 3.0) -> bool:
    """Whether this rank should print an error `message`. Rank 0 always does; another rank does
    unless rank 0 posts the same message within `wait_s` (every rank hit the same mistake). Goes
    through torchrun's store, not a collective: the process group may be broken by then."""
    rank = int(os.environ.get("RANK", "0"))
    if _STORE is None or int(os.environ.get("WORLD_SIZE", "1")) == 1:
        return True
    try:
        _STORE.set(f"error/{rank}", message)
        if rank == 0:
            return True
        _STORE.wait(["error/0"], timedelta(seconds=wait_s))
        return _STORE.get("error/0").decode() != message
    except Exception:  # rank 0 never failed, or the store is gone: say it here
        return True


def same_everywhere(world: Dist, what: str, value) -> None:
    """Refuse, naming the first rank that differs, when `value` (a config, a data fingerprint) is
    not the same on every rank: ranks that train on different data or options silently diverge."""
    if not world.multi_process:
        return
    values = [None] * world.world_size
    dist.all_gather_object(values, value)
    for rank, other in enumerate(values):
        if other != values[0]:
            detail = ""
            if isinstance(other, dict) and isinstance(values[0], dict):
                keys = sorted(k for k in set(other) | set(values[0]) if other.get(k) != values[0].get(k))
                detail = f" ({', '.join(keys[:5])})"
            raise UserError(
                f"rank {rank} has other {what} than rank 0{detail}; every rank must be started with the same "
                f"options and see the same files."
            )


def print0(*args, **kwargs) -> None:
    if int(os.environ.get("RANK", "0")) == 0:
        print(*args, **kwargs, flush=True)


def barrier(world: Dist) -> None:
    if world.multi_process:
        dist.barrier()


def all_reduce_sum(t: torch.Tensor, world: Dist) -> torch.Tensor:
    """Sum a tensor over all ranks (in place; returns it). A no-op for one process."""
    if world.multi_process:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_reduce_min(value: float, world: Dist) -> float:
    """The smallest of every rank's `value`."""
    if not world.multi_process:
        return value
    t = torch.tensor([float(value)], device=world.device)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return t.item()


def broadcast_object(obj, world: Dist):
    """Rank 0's value of a small picklable object, on every rank."""
    if not world.multi_process:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _ignore_stop_signals() -> None:
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, signal.SIG_IGN)


class StopFlag:
    """`with StopFlag() as stop:` SIGTERM / SIGINT ask the loop to stop after the current step
    (and save a checkpoint); the previous signal handlers are back when the block ends.

    Under torchrun every rank must stop at the same step, or one would wait forever in a
    collective: the flag is all-reduced (max over ranks) once per step.
    """

    def __init__(self):
        self.was_requested = False
        self._local = False
        self._previous = {}

    def __enter__(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._previous[sig] = signal.signal(sig, self._handler)
            except ValueError:  # not the main thread (e.g. called from a test runner thread)
                pass
        return self

    def __exit__(self, *exc):
        if self._local:
            return False  # stopping already: a later signal is noted and ignored until the clean exit
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        return False

    def _handler(self, signum, frame):
        """The first SIGTERM/SIGINT asks for the clean stop; later ones are noted and ignored. The
        interpreter's shutdown resets a Python-level handler to the default (kill), so a signal
        arriving then would turn the clean stop into a kill: once a stop is asked for, the shutdown
        starts by making the operating system ignore both signals."""
        if not self._local:
            atexit.register(_ignore_stop_signals)
        self._local = True

    def requested(self, world, sync: bool = True) -> bool:
        """Whether to stop now. Under torchrun the flag is all-reduced, a collective and so a host
        sync: with sync=False (a step that is not a log step) the ranks do not stop yet."""
        if not world.multi_process:
            self.was_requested = self._local
            return self._local
        if not sync:
            return False
        flag = torch.tensor([1.0 if self._local else 0.0], device=world.device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        self.was_requested = bool(flag.item())
        return self.was_requested
