"""Data parallelism by hand, on top of torch.distributed.

Every process holds a full replica of the model and runs forward/backward on its own shard of the
batch. Before the optimizer step, gradients are averaged over processes so that every replica
takes the identical step. How (the same design as PyTorch's DistributedDataParallel, Li et al.
2020, "PyTorch Distributed: Experiences on Accelerating Data Parallel Training"):

- At start, rank 0's parameters and buffers are broadcast, so all replicas start identical.
- Parameters are grouped into ~25 MB buckets in reverse registration order, which is roughly the
  order in which backward produces their gradients.
- A post-accumulate-grad hook on each parameter counts the gradients that are ready; when a
  bucket is complete, its gradients are copied into one flat buffer and an asynchronous
  all_reduce starts, so communication overlaps with the rest of backward.
- At the end of backward (a callback queued on the autograd engine), we wait for every bucket,
  divide by the world size and copy the averages back into .grad.
- Inside `no_sync()` (the non-final micro-steps of gradient accumulation) the hooks do nothing:
  gradients accumulate locally and are communicated once, on the last micro-step.
A tied parameter (GPT-2's wte / lm_head) is one tensor with one gradient, so it is reduced once.
"""

import contextlib

import torch
import torch.distributed as dist
import torch.nn as nn

from minitrain.options import DDPKind
from minitrain.training import fsdp


class Bucket:
    def __init__(self, params):
        self.params = params
        self.numel = sum(p.numel() for p in params)
        self.buffer = None  # flat gradient buffer, made on first use with the gradients' dtype
        self.ready = 0
        self.work = None


class BucketedDDP(nn.Module):
    """Distributed data parallelism with bucketed, overlapped gradient all-reduce (the algorithm of
    torch's DistributedDataParallel, written out; not torch.nn.DataParallel's single-process
    scatter/gather)."""

    def __init__(self, module: nn.Module, bucket_cap_mb: float = 25.0):
        super().__init__()
        self.module = module
        self.world_size = dist.get_world_size()
        self.sync = True
        with torch.no_grad():
            for t in list(module.parameters()) + list(module.buffers()):
                dist.broadcast(t, src=0)
        params = [p for p in module.parameters() if p.requires_grad]
        self.buckets, current, size = [], [], 0
        cap = bucket_cap_mb * 1024 * 1024
        for p in reversed(params):
            current.append(p)
            size += p.numel() * p.element_size()
            if size >= cap:
                self.buckets.append(Bucket(current))
                current, size = [], 0
        if current:
            self.buckets.append(Bucket(current))
        self.bucket_of = {}
        for b in self.buckets:
            for p in b.params:
                self.bucket_of[p] = b
                p.register_post_accumulate_grad_hook(self._grad_ready)
        self._callback_queued = False

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)

    @contextlib.contextmanager
    def no_sync(self):
        """Accumulate gradients locally; the next backward outside this context reduces them all."""
        self.sync = False
        try:
            yield
        finally:
            self.sync = True

    def _grad_ready(self, p: torch.Tensor) -> None:
        if not self.sync:
            return
        if not self._callback_queued:
            # Run _finish once the whole backward pass is done, as DistributedDataParallel does.
            torch.autograd.Variable._execution_engine.queue_callback(self._finish)
            self._callback_queued = True
        bucket = self.bucket_of[p]
        bucket.ready += 1
        if bucket.ready == len(bucket.params):
            self._launch(bucket)

    def _launch(self, bucket: Bucket) -> None:
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in bucket.params]
        if bucket.buffer is None or bucket.buffer.dtype != grads[0].dtype:
            bucket.buffer = torch.empty(bucket.numel, dtype=grads[0].dtype, device=grads[0].device)
        torch.cat([g.reshape(-1) for g in grads], out=bucket.buffer)
        bucket.work = dist.all_reduce(bucket.buffer, async_op=True)

    def _finish(self) -> None:
        for bucket in self.buckets:
            if bucket.work is None:  # some parameter got no gradient this time: reduce anyway
                self._launch(bucket)
        for bucket in self.buckets:
            bucket.work.wait()
            bucket.buffer.div_(self.world_size)
            offset = 0
            for p in bucket.params:
                n = p.numel()
                view = bucket.buffer[offset : offset + n].view_as(p)
                if p.grad is None:
                    p.grad = view.clone()
                else:
                    p.grad.copy_(view)
                offset += n
            bucket.ready, bucket.work = 0, None
        self._callback_queued = False


def wrap(model: nn.Module, kind: DDPKind, world) -> nn.Module:
    """The model the training loop calls under torchrun: `minitrain`, BucketedDDP above; `torch`,
    PyTorch's DistributedDataParallel. In one process, the model itself."""
    if not world.multi_process:
        return model
    device = world.device
    if kind == "minitrain":
        return BucketedDDP(model)
    if kind == "torch":
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    raise ValueError(f"unknown ddp kind {kind!r}")


def accumulate(model: nn.Module, batches: list, multi_process: bool):
    """`for x, y in accumulate(model, batches, ...):` the micro-batches of one optimizer step, with
    no gradient communication until the last: for every other one, model.no_sync() is held open
    while the loop body (forward and backward) runs, since the generator is paused inside it.
    A sharded model (FSDP) reduce-scatters after every micro-batch instead: see training/fsdp.py."""
    defer = multi_process and not fsdp.is_sharded(model)
    for i, batch in enumerate(batches):
        last = i == len(batches) - 1
        with model.no_sync() if defer and not last else contextlib.nullcontext():
            yield batch
