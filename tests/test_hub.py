"""Loading errors and the safetensors reader: every bad input is one clear sentence."""

import json
import pickle
import shutil
import struct

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from minitrain import UserError
from minitrain.models.bert import BertForSequenceClassification, BertModel
from minitrain.models.gpt2 import GPT2
from minitrain.models.hub import read_safetensors, write_safetensors


def copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def test_missing_folder():
    with pytest.raises(UserError, match=r"model folder './no/such/dir' does not exist"):
        GPT2.from_pretrained("./no/such/dir")


def test_missing_weights(tiny_gpt2_dir, tmp_path):
    d = copy(tiny_gpt2_dir, tmp_path / "m")
    (d / "model.safetensors").unlink()
    with pytest.raises(UserError, match=r"has no weights \(looked for model.safetensors"):
        GPT2.from_pretrained(d)


def test_truncated_safetensors(tiny_gpt2_dir, tmp_path):
    d = copy(tiny_gpt2_dir, tmp_path / "m")
    raw = (d / "model.safetensors").read_bytes()
    (d / "model.safetensors").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(UserError, match=r"not a valid safetensors file: tensor .* lies outside"):
        GPT2.from_pretrained(d)


def test_corrupt_header(tmp_path):
    p = tmp_path / "x.safetensors"
    p.write_bytes(struct.pack("<Q", 5) + b"{oops")
    with pytest.raises(UserError, match=r"its header is not JSON"):
        read_safetensors(p)


def test_other_architecture(tiny_gpt2_dir, tiny_bert_dir):
    with pytest.raises(UserError, match=r"holds a 'gpt2' model, not 'bert'"):
        BertModel.from_pretrained(tiny_gpt2_dir)
    with pytest.raises(UserError, match=r"holds a 'bert' model, not 'gpt2'"):
        GPT2.from_pretrained(tiny_bert_dir)


def test_shape_mismatch(tiny_gpt2_dir, tmp_path):
    d = copy(tiny_gpt2_dir, tmp_path / "m")
    cfg = json.loads((d / "config.json").read_text())
    cfg["n_positions"] = 64
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(
        UserError,
        match=r"transformer.wpe.weight .* has shape \(32, 32\), but the "
        r"config says \(64, 32\)",
    ):
        GPT2.from_pretrained(d)


def test_missing_and_unexpected_keys_are_named(tiny_bert_dir, tmp_path):
    d = copy(tiny_bert_dir, tmp_path / "m")
    state = read_safetensors(d / "model.safetensors")
    state = {k: v.clone() for k, v in state.items() if "pooler" not in k}
    state["bert.extra.weight"] = torch.zeros(2)
    write_safetensors(state, d / "model.safetensors")
    with pytest.raises(
        UserError,
        match=r"missing bert.pooler.dense.bias, bert.pooler.dense.weight; "
        r"unexpected bert.extra.weight",
    ):
        BertForSequenceClassification.from_pretrained(d)


def test_hub_id_offline_fails_in_one_sentence(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(
        UserError,
        match=r"could not download 'gpt2' from the Hugging Face hub .*"
        r"pass a local folder",
    ):
        GPT2.from_pretrained("gpt2")


def test_pytorch_model_bin_loads_and_pickles_are_refused(tiny_gpt2_dir, tmp_path):
    d = copy(tiny_gpt2_dir, tmp_path / "m")
    state = {k: v.clone() for k, v in read_safetensors(d / "model.safetensors").items()}
    (d / "model.safetensors").unlink()
    torch.save(state, d / "pytorch_model.bin")
    GPT2.from_pretrained(d)  # a plain state dict loads

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"x": Evil()}, d / "pytorch_model.bin", pickle_protocol=pickle.DEFAULT_PROTOCOL)
    with pytest.raises(UserError, match=r"pytorch_model.bin could not be read"):
        GPT2.from_pretrained(d)


def test_safetensors_round_trip_all_dtypes(tmp_path):
    tensors = {
        "f32": torch.randn(3, 4),
        "bf16": torch.randn(5).bfloat16(),
        "f16": torch.randn(2, 2).half(),
        "i64": torch.arange(7),
        "u8": torch.arange(4, dtype=torch.uint8),
        "empty": torch.zeros(0, 3),
        "bool": torch.tensor([True, False]),
    }
    write_safetensors(tensors, tmp_path / "t.safetensors")
    back = read_safetensors(tmp_path / "t.safetensors")
    assert back.keys() == tensors.keys()
    assert all(torch.equal(back[k], tensors[k]) and back[k].dtype == tensors[k].dtype for k in back)


def _file(header: dict, data: bytes) -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + data


@pytest.mark.parametrize(
    "header,data,message",
    [
        (
            {"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}},
            b"\0" * 8,
            "outside the file",
        ),
        (
            {
                "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]},
            },
            b"\0" * 12,
            "overlap",
        ),
        ({"a": {"dtype": "Q7", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 4, "bad dtype"),
        ({"a": {"dtype": "F32", "shape": [10**12], "data_offsets": [0, 4]}}, b"\0" * 4, "needs"),
        ({"a": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}, b"\0" * 4, "negative"),
    ],
)
def test_safetensors_rejects_bad_headers(tmp_path, header, data, message):
    p = tmp_path / "bad.safetensors"
    p.write_bytes(_file(header, data))
    with pytest.raises(UserError, match=message):
        read_safetensors(p)


def test_safetensors_rejects_absurd_header_length(tmp_path):
    p = tmp_path / "bad.safetensors"
    p.write_bytes(struct.pack("<Q", 2**62) + b"{}")
    with pytest.raises(UserError, match="header claims"):
        read_safetensors(p)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(blob=st.binary(max_size=300), header_len=st.integers(0, 400))
def test_safetensors_fuzz_never_crashes_or_reads_past_the_end(tmp_path, blob, header_len):
    p = tmp_path / "fuzz.safetensors"
    p.write_bytes(struct.pack("<Q", header_len) + blob)
    try:
        tensors = read_safetensors(p)
    except UserError:
        return
    for t in tensors.values():  # whatever was accepted lies inside the file
        assert t.numel() * t.element_size() <= len(blob)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    entries=st.dictionaries(
        st.text(min_size=1, max_size=5),
        st.fixed_dictionaries(
            {
                "dtype": st.sampled_from(["F32", "F16", "I8", "X"]),
                "shape": st.lists(st.integers(-2, 6), max_size=3),
                "data_offsets": st.lists(st.integers(-4, 80), min_size=2, max_size=2),
            }
        ),
        max_size=4,
    ),
    size=st.integers(0, 64),
)
def test_safetensors_fuzz_structured_headers(tmp_path, entries, size):
    p = tmp_path / "fuzz2.safetensors"
    p.write_bytes(_file(entries, b"\1" * size))
    try:
        tensors = read_safetensors(p)
    except UserError:
        return
    spans = sorted(tuple(entries[k]["data_offsets"]) for k in tensors)
    assert all(0 <= a <= b <= size for a, b in spans)
    assert all(spans[i][1] <= spans[i + 1][0] for i in range(len(spans) - 1))
