"""2-process training tokens/s of --ddp minitrain vs --ddp torch, in the same run.

Run directly under torchrun (one measurement), or through compare() (both, side by side).
"""

import json
import os
import subprocess
import sys
import time

import torch


def worker(kind, steps=30, warmup=5):
    from minitrain.models.gpt2 import GPT2, GPT2Config
    from minitrain.training import dist as mdist
    from minitrain.training.ddp import wrap

    world = mdist.setup("auto")
    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=8192, n_layer=4, n_head=4, n_embd=256, n_positions=256)
    raw = GPT2(cfg).to(world.device)
    model = wrap(raw, kind, world)
    opt = torch.optim.AdamW(raw.parameters(), lr=1e-4)
    B, T = 8, 256
    x = torch.randint(0, cfg.vocab_size, (B, T), device=world.device)
    times = []
    for i in range(warmup + steps):
        if world.device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        model(x, x)[1].backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if world.device.type == "cuda":
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    times.sort()
    tokens_per_sec = world.world_size * B * T / times[len(times) // 2]
    mdist.print0(json.dumps({"ddp": kind, "tokens_per_sec": tokens_per_sec}))
    mdist.teardown()


def compare(device, rounds=2):
    """Alternate the two implementations `rounds` times each and compare the best of each."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    best = {"minitrain": 0.0, "torch": 0.0}
    for _ in range(rounds):
        for kind in best:
            out = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "torch.distributed.run",
                    "--standalone",
                    "--nproc_per_node=2",
                    "-m",
                    "bench.ddp",
                    kind,
                ],
                capture_output=True,
                text=True,
                env=env,
            )
            line = [x for x in out.stdout.splitlines() if x.startswith("{")]
            if out.returncode != 0 or not line:
                raise RuntimeError(f"DDP bench failed:\n{out.stderr[-2000:]}")
            best[kind] = max(best[kind], json.loads(line[-1])["tokens_per_sec"])
    ratio = best["minitrain"] / best["torch"]
    print(
        f"2-process DDP on {device.type}: minitrain {best['minitrain']:,.0f} tokens/s, torch "
        f"{best['torch']:,.0f} tokens/s, ratio {ratio:.3f}"
    )
    return {**best, "ratio": ratio}


if __name__ == "__main__":
    worker(sys.argv[1])
    os._exit(0)  # skip interpreter finalization under torchrun (see minitrain.cli.run_cli)
