"""Padded vs packed prompt/completion fine-tuning (#25): real tokens/s, seconds per epoch, packing
efficiency and the final loss, on the same model, examples and order.

    python -m bench.packing                              # CPU-sized: 4 layers x 128, T=256, 2 rounds
    python -m bench.packing --examples 1024 --rounds 3   # longer, steadier
    python -m bench.packing --n_embd 768 --n_layer 12 --block_size 1024 --examples 4096  # GPU-sized

The data: synthetic prompt/completion examples with a long-tailed length distribution (lengths
log-normal, median block/8, sigma 1, cut to the block as train_gpt2 cuts; the prompt a random 10-60 %
of each), ids from a fixed random bigram chain so that the loss can fall. Each mode trains one
epoch from the same initial weights, the same examples in the same seeded order (EpochOrder), B
examples per micro-batch, with train_gpt2's step (loss sum / the window's targets, backward, clip,
AdamW): the updates are the same, so the final losses agree and only the time differs. Modes
alternate round by round (padded, packed, padded, ...) and each keeps its best round, so a busy
patch of a shared machine does not land on one side only. tokens/s counts real tokens (padding
excluded) in both modes; packing efficiency is real tokens / (rows x row length) computed.
"""

import argparse
import json
import time

import numpy as np
import torch

from bench.train_step import environment, save_result
from minitrain.data.completions import Examples
from minitrain.data.packing import Layout
from minitrain.data.tokens import EpochOrder
from minitrain.models.gpt2 import GPT2, GPT2Config


def long_tailed_examples(n: int, T: int, vocab: int, seed: int = 0) -> Examples:
    """n examples, lengths log-normal (median T / 8, sigma 1) cut to T + 1 ids; ids from a random
    bigram chain (each id has 4 likely successors); the last id of the vocabulary is end-of-text."""
    rng = np.random.default_rng(seed)
    successors = rng.integers(0, vocab - 1, (vocab, 4))
    lengths = np.clip(rng.lognormal(np.log(T / 8), 1.0, n).astype(int), 2, None)
    seqs, prompt_lens, cut = [], [], 0
    for L in lengths:
        ids = [int(rng.integers(0, vocab - 1))]
        for _ in range(L - 2):
            ids.append(int(successors[ids[-1], rng.integers(0, 4)]))
        s = np.asarray(ids + [vocab - 1], dtype=np.int64)
        cut += len(s) > T + 1
        s = s[: T + 1]
        seqs.append(s)
        prompt_lens.append(int(rng.uniform(0.1, 0.6) * (len(s) - 1)))
    return Examples(seqs, prompt_lens, [""] * n, eot=vocab - 1, cut=cut)


def train_epoch(ex: Examples, packed: bool, args) -> dict:
    T, B = args.block_size, args.batch_size
    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=args.vocab, n_positions=T, n_embd=args.n_embd, n_layer=args.n_layer, n_head=args.n_head)
    model = GPT2(cfg).to(args.device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
    layout = Layout(T, packed, False, True, None)
    order = EpochOrder(ex, T, 0, 0)
    steps = len(order) // B
    losses, seconds, real, computed = [], 0.0, 0, 0
    for step in range(steps):
        ids = order[step * B : (step + 1) * B]
        t0 = time.perf_counter()
        x, y, doc_ids = layout.batch(ex, ids, args.device)
        window = (y != -100).sum()
        _, loss_sum = model(x, y, reduction="sum", doc_ids=doc_ids)
        (loss_sum / window).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        loss = (loss_sum / window).item()  # the host sync of the step (the script's is at log steps)
        seconds += time.perf_counter() - t0
        r, c = layout.count(ex, ids, B)
        real, computed = real + r, computed + c
        losses.append(loss)
    return {
        "mode": "packed" if packed else "padded",
        "steps": steps,
        "epoch_s": round(seconds, 3),
        "tokens_per_sec": round(real / seconds, 1),
        "real_tokens": real,
        "computed_tokens": computed,
        "packing_efficiency": round(real / computed, 4),
        "final_loss": round(float(np.mean(losses[-args.last :])), 6),  # mean over the last steps
    }


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--examples", type=int, default=256, help="examples per epoch")
    p.add_argument("--block_size", type=int, default=256)
    p.add_argument("--batch_size", type=int, default=16, help="examples per step (per micro-batch)")
    p.add_argument("--n_layer", type=int, default=4)
    p.add_argument("--n_head", type=int, default=4)
    p.add_argument("--n_embd", type=int, default=128)
    p.add_argument("--vocab", type=int, default=2048)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--rounds", type=int, default=2, help="alternating rounds; each mode keeps its best")
    p.add_argument("--last", type=int, default=4, help="final loss: the mean over this many last steps")
    p.add_argument("--out", default="bench/results")
    args = p.parse_args(argv)
    args.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")

    ex = long_tailed_examples(args.examples, args.block_size, args.vocab)
    lengths = ex.lengths(range(args.examples), args.block_size)
    print(
        f"{args.examples} examples: input lengths median {np.median(lengths):.0f}, mean {lengths.mean():.0f}, "
        f"max {lengths.max()} of {args.block_size} ({ex.cut} cut to the block); device {args.device}; "
        f"torch {torch.__version__}; {torch.get_num_threads()} threads"
    )
    best = {}
    for _ in range(args.rounds):
        for packed in (False, True):
            r = train_epoch(ex, packed, args)
            print(json.dumps(r))
            if r["mode"] not in best or r["tokens_per_sec"] > best[r["mode"]]["tokens_per_sec"]:
                best[r["mode"]] = r
    speedup = best["packed"]["tokens_per_sec"] / best["padded"]["tokens_per_sec"]
    loss_gap = abs(best["packed"]["final_loss"] - best["padded"]["final_loss"])
    print(
        f"packed / padded real tokens/s = {speedup:.2f} (epoch {best['padded']['epoch_s']:.1f} s -> "
        f"{best['packed']['epoch_s']:.1f} s); packing efficiency {best['padded']['packing_efficiency']:.0%} padded, "
        f"{best['packed']['packing_efficiency']:.0%} packed; final loss {best['padded']['final_loss']:.4f} vs "
        f"{best['packed']['final_loss']:.4f} (difference {loss_gap:.1e})"
    )
    result = {**environment(), "config": {k: str(v) for k, v in vars(args).items()}, "best": best}
    result |= {"speedup": round(speedup, 3), "final_loss_difference": loss_gap}
    return save_result(result, "", "packing", folder=args.out)  # --out: a folder


if __name__ == "__main__":
    main()
