"""minitrain/data.py: blocks over several shards, the seeded epoch order, batches."""

import numpy as np
import pytest

from minitrain.data import tokens as data
from minitrain.data.shards import write_shard


@pytest.fixture
def three_shards(tmp_path):
    sizes = [101, 57, 230]  # 10, 5 and 22 blocks of 10 tokens (+1)
    paths, start = [], 0
    for i, n in enumerate(sizes):
        paths.append(tmp_path / f"x_train_{i:06d}.bin")
        write_shard(paths[-1], np.arange(start, start + n, dtype=np.uint16))
        start += n
    return paths


def test_blocks_stay_inside_their_shard(three_shards):
    tokens = data.Tokens(three_shards)
    assert len(tokens) == 388 and tokens.num_blocks(10) == 10 + 5 + 22
    rows = tokens.rows(range(37), 10)
    # every row is 11 consecutive ids of one shard: block i of a shard starts at its i * 10th id
    assert (np.diff(rows, axis=1) == 1).all()
    assert rows[0, 0] == 0 and rows[10, 0] == 101 and rows[15, 0] == 158 and rows[36, -1] == 158 + 220
    assert max(r[-1] for r in rows[:10]) <= 100 and max(r[-1] for r in rows[10:15]) <= 157


def test_epoch_order_is_seeded_a_permutation_and_maps_few_shards(three_shards):
    tokens = data.Tokens(three_shards)
    a = data.EpochOrder(tokens, 10, seed=1, epoch=0)
    assert sorted(a[0:37].tolist()) == list(range(37))
    pieces = np.concatenate([a[i : i + 4] for i in range(0, 37, 4)])  # sliced as the loop slices it
    assert (pieces == data.EpochOrder(tokens, 10, 1, 0)[0:37]).all() and (pieces == a[0:37]).all()
    assert (a[0:37] != data.EpochOrder(tokens, 10, 1, 1)[0:37]).any()
    assert (a[0:37] != data.EpochOrder(tokens, 10, 2, 0)[0:37]).any()
    # a shard's blocks are contiguous in the order: one shard is read at a time
    shard_of = np.searchsorted(tokens.first_block(10), a[0:37], side="right") - 1
    assert (np.diff(shard_of) != 0).sum() == 2
    for i in range(0, 37, 3):
        tokens.rows(a[i : i + 3], 10)
        assert len(tokens._mapped) <= data.Tokens.OPEN


def test_batches_made_for_a_device_are_the_same_batches():
    import torch

    tokens = data.Tokens([np.arange(1000, dtype=np.uint16)])
    x, y = tokens.batch([3, 7], 16)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    xd, yd = tokens.batch([3, 7], 16, torch.device(device))
    assert torch.equal(x, xd.cpu()) and torch.equal(y, yd.cpu()) and xd.device.type == device
    assert torch.equal(x[0], torch.arange(48, 64)) and torch.equal(y[1], torch.arange(113, 129))
