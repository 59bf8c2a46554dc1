"""Reading and writing Hugging Face model folders: config.json, weights, tokenizer files.

The safetensors format is simple enough to implement here (and so to validate strictly):
    8 bytes   little-endian u64 N, the length of the JSON header
    N bytes   JSON {name: {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]}, ...}
    rest      the raw little-endian bytes of every tensor, offsets relative to the end of the header
Spec: https://github.com/huggingface/safetensors#format
"""

import json
import mmap
import os
import shutil
from pathlib import Path

import torch
from torch.distributed.tensor import DTensor
from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

from minitrain import UserError, first_line
from minitrain.atomic import atomic_write

SAFETENSORS_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
DTYPE_NAMES = {v: k for k, v in SAFETENSORS_DTYPES.items()}
MAX_HEADER_BYTES = 100 * 1024 * 1024  # the reference implementation's limit as well
MAX_SHARD_BYTES = 5 * 10**9  # weights above this are written in shards (transformers' default is 5 GB too)

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.json",
    "merges.txt",
    "vocab.txt",
    "chat_template.jinja",  # where transformers 5 saves a chat template
)


# ----------------------------------------------------------------------------------------------
# safetensors


def read_safetensors(path) -> dict[str, torch.Tensor]:
    """Memory-map a .safetensors file and return its tensors, validating every header field."""
    path = Path(path)
    file_size = path.stat().st_size
    bad = f"{path} is not a valid safetensors file"
    if file_size < 8:
        raise UserError(f"{bad}: it is only {file_size} bytes long (truncated?).")
    with open(path, "rb") as f:
        header_len = int.from_bytes(f.read(8), "little")
        if header_len > MAX_HEADER_BYTES or 8 + header_len > file_size:
            raise UserError(f"{bad}: its header claims {header_len} bytes (truncated or corrupt).")
        try:
            header = json.loads(f.read(header_len))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise UserError(f"{bad}: its header is not JSON ({e}).") from None
        if not isinstance(header, dict):
            raise UserError(f"{bad}: its header is not a JSON object.")
        header.pop("__metadata__", None)
        data_start, data_len = 8 + header_len, file_size - 8 - header_len
        spans = []
        for name, info in header.items():
            try:
                dtype = SAFETENSORS_DTYPES[info["dtype"]]
                shape = [int(s) for s in info["shape"]]
                begin, end = (int(o) for o in info["data_offsets"])
            except (KeyError, TypeError, ValueError):
                raise UserError(f"{bad}: tensor {name!r} has a bad dtype/shape/offsets entry.") from None
            numel = 1
            for s in shape:
                if s < 0:
                    raise UserError(f"{bad}: tensor {name!r} has a negative dimension.")
                numel *= s
            nbytes = numel * dtype.itemsize
            if not 0 <= begin <= end <= data_len:
                raise UserError(
                    f"{bad}: tensor {name!r} lies outside the file (bytes {begin}..{end} of {data_len}; truncated?)."
                )
            if end - begin != nbytes:
                raise UserError(f"{bad}: tensor {name!r} has {end - begin} bytes, needs {nbytes}.")
            spans.append((begin, end, name, dtype, shape))
        spans.sort()
        for (_, end_a, name_a, *_), (begin_b, _, name_b, *_) in zip(spans, spans[1:]):
            if begin_b < end_a:
                raise UserError(f"{bad}: tensors {name_a!r} and {name_b!r} overlap.")
        if not spans:
            return {}
        # ACCESS_COPY: pages are read lazily, and the buffer is writable as torch.frombuffer wants.
        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
    tensors = {}
    for begin, end, name, dtype, shape in spans:
        if end == begin:
            tensors[name] = torch.empty(shape, dtype=dtype)
        else:
            flat = torch.frombuffer(mm, dtype=dtype, count=(end - begin) // dtype.itemsize, offset=data_start + begin)
            tensors[name] = flat.view(shape)
    return tensors


def write_safetensors(tensors: dict[str, torch.Tensor], path, metadata=None) -> None:
    """Write tensors to `path` atomically (temporary file, fsync, rename)."""
    header, offset, blobs = {}, 0, []
    for name, t in tensors.items():
        t = t.detach().to("cpu").contiguous()
        data = t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""
        header[name] = {
            "dtype": DTYPE_NAMES[t.dtype],
            "shape": list(t.shape),
            "data_offsets": [offset, offset + len(data)],
        }
        offset += len(data)
        blobs.append(data)
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # align the data to 8 bytes, as the reference writer does
    with atomic_write(path) as f:
        f.write(len(raw).to_bytes(8, "little"))
        f.write(raw)
        for data in blobs:
            f.write(data)


# ----------------------------------------------------------------------------------------------
# model folders


def resolve_model_dir(name_or_dir, allow_patterns=None) -> Path:
    """A local folder as it is, or a hub id downloaded to the local cache with huggingface_hub."""
    path = Path(os.path.expanduser(str(name_or_dir)))
    if path.is_dir():
        return path
    looks_local = str(name_or_dir).startswith((".", "/", "~")) or path.exists()
    if looks_local or str(name_or_dir).count("/") > 1 or not str(name_or_dir).strip():
        raise UserError(f"model folder {str(name_or_dir)!r} does not exist.")
    try:
        from huggingface_hub import snapshot_download

        repo = str(name_or_dir)
        if allow_patterns is not None:  # e.g. tokenizer files only
            return Path(snapshot_download(repo_id=repo, allow_patterns=list(allow_patterns)))
        # Model repos often hold the same weights in several formats: fetch safetensors, and the
        # pickle-based pytorch_model.bin only for repos that have nothing else.
        folder = Path(snapshot_download(repo_id=repo, allow_patterns=["*.json", "*.txt", "*.safetensors"]))
        if not any(folder.glob("*.safetensors")):
            folder = Path(snapshot_download(repo_id=repo, allow_patterns=["pytorch_model.bin"]))
        return folder
    except Exception as e:  # no network, unknown id, gated repo: all end the same way for the user
        raise UserError(
            f"could not download {str(name_or_dir)!r} from the Hugging Face hub ({first_line(e)}); "
            f"pass a local folder with config.json and model.safetensors instead."
        ) from None


def check_local_model(name_or_dir, model_type: str | tuple[str, ...]) -> None:
    """Before any heavy work: a local model folder must exist and hold a config.json of
    `model_type` (or one of several; a hub id is checked when it is downloaded)."""
    path = Path(os.path.expanduser(str(name_or_dir)))
    if str(name_or_dir).startswith((".", "/", "~")) or path.exists():
        folder = resolve_model_dir(name_or_dir)
        check_model_type(read_config(folder), folder, model_type)


def read_config(model_dir) -> dict:
    path = Path(model_dir) / "config.json"
    if not path.is_file():
        raise UserError(f"{model_dir} has no config.json, so it is not a Hugging Face model folder.")
    try:
        return json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{path} is not valid JSON ({e}).") from None


def check_model_type(config: dict, model_dir, expected: str | tuple[str, ...]) -> None:
    expected = (expected,) if isinstance(expected, str) else tuple(expected)
    got = config.get("model_type")
    if got not in expected:
        quoted, names = " or ".join(map(repr, expected)), " or ".join(expected)
        raise UserError(f"{model_dir} holds a {got!r} model, not {quoted}; pass a {names} checkpoint.")


def load_state_dict(model_dir) -> dict[str, torch.Tensor]:
    """A model folder's weights: model.safetensors (maybe sharded) or pytorch_model.bin."""
    model_dir = Path(model_dir)
    if (model_dir / "model.safetensors").is_file():
        return read_safetensors(model_dir / "model.safetensors")
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():  # sharded: the index maps every tensor to its file
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as e:
            raise UserError(f"{index} is not a safetensors index (no weight_map: {first_line(e)}).") from None
        state = {}
        for shard in sorted(set(weight_map.values())):
            if not (model_dir / shard).is_file():
                raise UserError(f"{index} lists the shard {shard}, which is not in {model_dir}.")
            tensors = read_safetensors(model_dir / shard)
            state.update({k: v for k, v in tensors.items() if weight_map.get(k) == shard})
        if missing := sorted(set(weight_map) - set(state)):
            raise UserError(f"{index} lists {missing[0]}, which its shard does not hold.")
        return state
    if (model_dir / "pytorch_model.bin").is_file():
        try:
            path = model_dir / "pytorch_model.bin"
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise UserError(f"{model_dir / 'pytorch_model.bin'} could not be read ({e}).") from None
    raise UserError(f"{model_dir} has no weights (looked for {', '.join(WEIGHT_FILES)}).")


def write_weights(state: dict[str, torch.Tensor], out_dir, max_shard_bytes: int = MAX_SHARD_BYTES) -> None:
    """model.safetensors, or (above max_shard_bytes) model-0000i-of-0000n.safetensors shards and
    model.safetensors.index.json, as transformers writes them. Tensors are never split; a tensor
    larger than the limit gets a shard of its own. The other layout's files are removed, so the
    folder holds one set of weights."""
    out_dir = Path(out_dir)
    shards, size = [{}], 0
    for name, t in state.items():
        n = t.numel() * t.element_size()
        if shards[-1] and size + n > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = t
        size += n
    for old in [*out_dir.glob("model-*-of-*.safetensors"), out_dir / "model.safetensors.index.json"]:
        old.unlink(missing_ok=True)
    if len(shards) == 1:
        write_safetensors(state, out_dir / "model.safetensors", {"format": "pt"})
        return
    (out_dir / "model.safetensors").unlink(missing_ok=True)
    weight_map = {}
    for i, shard in enumerate(shards, 1):
        name = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        write_safetensors(shard, out_dir / name, {"format": "pt"})
        weight_map |= {k: name for k in shard}
    total = sum(t.numel() * t.element_size() for t in state.values())
    with atomic_write(out_dir / "model.safetensors.index.json", "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2, sort_keys=True)


def copy_tokenizer_files(src_dir, dst_dir) -> None:
    """Copy whichever tokenizer files `src_dir` has next to an exported model."""
    if src_dir is None:
        return
    for name in TOKENIZER_FILES:
        src = Path(src_dir) / name
        if src.is_file() and src.resolve() != (Path(dst_dir) / name).resolve():
            shutil.copyfile(src, Path(dst_dir) / name)


def write_config(config: dict, model_dir) -> None:
    with atomic_write(Path(model_dir) / "config.json", "w") as f:
        json.dump(config, f, indent=2, sort_keys=True)


def load_into(own: dict, state: dict, model_dir, skip=(), transposed=()) -> None:
    """Copy a checkpoint's tensors into `own` (a model's state_dict), by name, checking every shape.

    `skip`: name fragments of tensors that are not weights (buffers like position_ids) or that
    belong to heads this model does not have; `transposed`: names stored as (in, out) by GPT-2's
    Conv1D. Any other missing or unexpected key is an error that names it.
    """
    state = {k: v for k, v in state.items() if not any(s in k for s in skip)}
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}")
        if unexpected:
            parts.append(f"unexpected {', '.join(unexpected[:5])}{' ...' if len(unexpected) > 5 else ''}")
        raise UserError(f"the weights in {model_dir} do not fit this model: {'; '.join(parts)}.")
    with torch.no_grad():
        for name, src in state.items():
            if any(name.endswith(t) for t in transposed):
                src = src.t()
            dst = own[name]
            if dst.shape != src.shape:
                raise UserError(
                    f"the weight {name} in {model_dir} has shape {tuple(src.shape)}, but the "
                    f"config says {tuple(dst.shape)}."
                )
            copy_into(dst, src)


def copy_into(dst: torch.Tensor, src: torch.Tensor) -> None:
    """dst.copy_(src); a sharded `dst` (FSDP's DTensor) takes only its own slice of the full `src`,
    so a memory-mapped checkpoint is read, and held, only where this rank's shard lies."""
    if not isinstance(dst, DTensor):
        dst.copy_(src)
        return
    shape, offset = compute_local_shape_and_global_offset(dst.shape, dst.device_mesh, dst.placements)
    dst.to_local().copy_(src[tuple(slice(o, o + n) for o, n in zip(offset, shape))])
