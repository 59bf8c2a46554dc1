"""minitrain/shards.py: llm.c's .bin layout, written and read; damaged shards refused."""

import numpy as np
import pytest

from minitrain import UserError
from minitrain.data.shards import read_shard, write_shard


def reference_write(path, ids, magic, version, dtype):
    """A shard written the way llm.c's dev/data/data_common.py describes it, independently of ours."""
    header = np.zeros(256, dtype=np.int32)
    header[0], header[1], header[2] = magic, version, len(ids)
    with open(path, "wb") as f:
        f.write(header.tobytes())
        f.write(np.array(ids, dtype=dtype).tobytes())


@pytest.mark.parametrize("dtype,magic,version", [(np.uint16, 20240520, 1), (np.uint32, 20240801, 7)])
def test_round_trip_and_the_reference_layout(tmp_path, dtype, magic, version):
    ids = np.random.default_rng(0).integers(0, np.iinfo(dtype).max, 1000).astype(dtype)
    write_shard(tmp_path / "ours.bin", ids)
    reference_write(tmp_path / "ref.bin", ids, magic, version, dtype)
    assert (tmp_path / "ours.bin").read_bytes() == (tmp_path / "ref.bin").read_bytes()
    back = read_shard(tmp_path / "ref.bin")
    assert back.dtype == dtype and (back == ids).all()


@pytest.mark.parametrize(
    "damage,words",
    [
        ("magic", "is not a token shard"),
        ("version", "has shard format version 3"),
        ("truncated", "is truncated or damaged: its header counts 100 tokens (1,224 bytes) but the file has 1,124"),
        ("longer", "is truncated or damaged"),
    ],
)
def test_damaged_shards_are_refused_in_one_sentence(tmp_path, damage, words):
    path = tmp_path / "x_train_000000.bin"
    write_shard(path, np.arange(100, dtype=np.uint16))
    raw = bytearray(path.read_bytes())
    if damage == "magic":
        raw[0:4] = np.int32(12345).tobytes()
    elif damage == "version":
        raw[4:8] = np.int32(3).tobytes()
    elif damage == "truncated":
        raw = raw[:-100]
    else:
        raw += b"\0\0"
    path.write_bytes(bytes(raw))
    with pytest.raises(UserError) as e:
        read_shard(path)
    assert words in str(e.value) and str(path) in str(e.value)


@pytest.mark.parametrize("name", ["wiki_train_2023.txt", "news_val_set.txt"])
def test_a_source_whose_name_holds_a_split_marker_keeps_its_splits_apart(tmp_path, name):
    """Shards are named NAME_SPLIT_NNNNNN.bin after the source: a NAME with "_train_" or "_val_"
    in it must not put the validation shard into training (or the training one into validation)."""
    import json

    from minitrain.data.corpus import open_splits
    from minitrain.data.tokenizer import train_bpe

    lines = [f"line number {i} of the corpus, with some words in it." for i in range(200)]
    (tmp_path / name).write_text("\n".join(lines) + "\n")
    train, val = open_splits(str(tmp_path / name), train_bpe(lines, 300), 0.1, tmp_path / "cache", progress=False)
    meta = json.loads((train.shards[0].parent / "meta.json").read_text())
    assert [p.name for p in train.shards] == [s["file"] for s in meta["train"]["shards"]]
    assert [p.name for p in val.shards] == [s["file"] for s in meta["val"]["shards"]]
    assert (len(train), len(val)) == (meta["train"]["tokens"], meta["val"]["tokens"])


def test_shard_names_of_llm_c_and_of_prepare():
    from minitrain.data.shards import shard_split

    names = {
        "fineweb_train_000001.bin": "train",
        "wiki_train_2023_val_000000.bin": "val",
        "tiny_shakespeare_val.bin": "val",  # llm.c's unnumbered tinyshakespeare shards
        "x_train_abc.bin": None,
        "meta.json": None,
    }
    assert {n: shard_split(n) for n in names} == names
