"""BucketedDDP on a GPT-2 whose blocks are compiled in place (--compile_scope blocks): print how many
gradient buckets were all-reduced before backward reached the first block. Overlap means most of
them: each block's bucket is launched as soon as its gradients exist, not after all of backward.

    python tests/overlap_worker.py eager|blocks
"""

import socket
import sys

import torch
import torch.distributed as dist

from minitrain.models.gpt2 import GPT2, GPT2Config
from minitrain.training.ddp import BucketedDDP

with socket.socket() as s:  # a free port for the one-process group
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
torch.manual_seed(0)
model = GPT2(GPT2Config(vocab_size=64, n_positions=16, n_embd=32, n_layer=3, n_head=2))
events = []


class Mark(torch.autograd.Function):
    """Identity whose backward notes that backward has passed block i's input."""

    @staticmethod
    def forward(ctx, x, i):
        ctx.i = i
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g):
        events.append(f"block {ctx.i} done")
        return g, None


blocks = list(model.transformer.h)
for i, block in enumerate(blocks):
    block.register_forward_pre_hook(lambda module, args, i=i: (Mark.apply(args[0], i), *args[1:]))
if sys.argv[1] == "blocks":
    model.compile_blocks()
ddp = BucketedDDP(model, bucket_cap_mb=0.001)  # about one parameter per bucket
launch = ddp._launch
ddp._launch = lambda bucket: (events.append("launch"), launch(bucket))
x = torch.randint(0, 64, (2, 16))
for _ in range(2):  # the second pass runs the compiled code
    events.clear()
    ddp(x, x)[1].backward()
print(f"launches before block 0: {events[: events.index('block 0 done')].count('launch')} of {events.count('launch')}")
dist.destroy_process_group()
