"""Run under torchrun by test_ddp.py: each rank trains on different data with minitrain's
BucketedDDP (small buckets, so there are several) and checks after every step that all ranks hold
identical parameters and the gradient equals the all-rank average computed directly."""

import os

import torch
import torch.distributed as dist

from minitrain.models.gpt2 import GPT2, GPT2Config
from minitrain.training import dist as mdist
from minitrain.training.ddp import BucketedDDP


def main():
    d = mdist.setup("cpu")
    torch.manual_seed(100 + d.rank)  # different initial weights: the broadcast must fix that
    model = GPT2(GPT2Config(vocab_size=64, n_positions=16, n_embd=32, n_layer=2, n_head=2))
    ddp = BucketedDDP(model, bucket_cap_mb=0.01)
    assert len(ddp.buckets) > 3, len(ddp.buckets)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(d.rank)
    for step in range(4):
        accum = 1 + step % 2  # alternate plain steps and steps with 2 micro-batches (no_sync)
        batches = [
            (torch.randint(0, 64, (2, 16), generator=g), torch.randint(0, 64, (2, 16), generator=g))
            for _ in range(accum)
        ]
        for m, (x, y) in enumerate(batches):
            if m < accum - 1:
                with ddp.no_sync():
                    (ddp(x, y)[1] / accum).backward()
            else:
                (ddp(x, y)[1] / accum).backward()
        # reference: each rank's local gradient recomputed, then averaged with a plain all_reduce
        ref = GPT2(model.config)
        ref.load_state_dict(model.state_dict())
        for x, y in batches:
            (ref(x, y)[1] / accum).backward()
        for p, q in zip(model.parameters(), ref.parameters()):
            dist.all_reduce(q.grad)
            q.grad /= d.world_size
            assert torch.allclose(p.grad, q.grad, atol=1e-6), "gradient is not the all-rank mean"
        opt.step()
        opt.zero_grad(set_to_none=True)
        for p in model.parameters():
            gathered = [torch.empty_like(p) for _ in range(d.world_size)]
            dist.all_gather(gathered, p.detach())
            assert all(torch.equal(gathered[0], t) for t in gathered), f"replicas differ at {step}"
    mdist.print0("replicas identical after every step")
    del ddp, model, opt
    mdist.teardown()


if __name__ == "__main__":
    main()
    os._exit(0)  # as minitrain.cli.run_cli does under torchrun: skip interpreter finalization
