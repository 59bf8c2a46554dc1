"""minitrain/precision.py: dtype names, autocast, and a GradScaler that is on for fp16 only."""

import pytest
import torch

from minitrain import UserError
from minitrain.training.precision import autocast, choose_dtype, make_scaler, resolve_dtype

CPU = torch.device("cpu")


@pytest.mark.parametrize(
    "avx512_bf16, amx, expected",
    [(False, False, torch.float32), (True, False, torch.bfloat16), (False, True, torch.bfloat16)],
)
def test_auto_is_bf16_exactly_where_the_cpu_computes_it(monkeypatch, avx512_bf16, amx, expected):
    """The capability faked both ways: auto follows torch's probes, whatever this machine has."""
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    dtype, why = choose_dtype("auto", CPU)
    assert dtype == expected and ("natively" in why) == (expected == torch.bfloat16)
    assert choose_dtype("fp32", CPU) == (torch.float32, "--dtype fp32")  # an explicit choice is kept


def test_dtype_names_and_the_scaler():
    assert resolve_dtype("bf16", CPU) == torch.bfloat16
    assert make_scaler(CPU, torch.float16).is_enabled()
    assert not make_scaler(CPU, torch.bfloat16).is_enabled()
    assert not make_scaler(CPU, torch.float32).is_enabled()
    with pytest.raises(UserError, match=r"--dtype='fp8' is not one of auto, fp32, bf16, fp16"):
        resolve_dtype("fp8", CPU)


def test_autocast_runs_matmuls_in_bf16_and_fp32_is_untouched():
    a, b = torch.randn(4, 4), torch.randn(4, 4)
    with autocast(CPU, torch.bfloat16):
        assert (a @ b).dtype == torch.bfloat16
    with autocast(CPU, torch.float32):
        assert (a @ b).dtype == torch.float32


def test_largest_batch_doubles_until_the_first_failure():
    from minitrain.training.batchsize import largest_batch

    tried = []

    def fits_up_to(n):
        def fits(b):
            tried.append(b)
            return b <= n

        return fits

    assert largest_batch(fits_up_to(40), limit=1024) == 32 and tried == [1, 2, 4, 8, 16, 32, 64]
    assert largest_batch(fits_up_to(1000), limit=1024, multiple_of=24) == 8  # must divide 24 sequences
    assert largest_batch(fits_up_to(0)) == 0


def test_out_of_memory_is_one_sentence(corpus, cache, tmp_path, capsys, monkeypatch):
    import sys

    import train_gpt2
    from minitrain.cli import run_cli
    from minitrain.models.gpt2 import GPT2

    def oom(self, *args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(GPT2, "forward", oom)
    monkeypatch.setattr(
        sys, "argv", ["train_gpt2.py", f"--data={corpus}", f"--out_dir={tmp_path / 'o'}", f"--cache_dir={cache}"]
    )
    with pytest.raises(SystemExit) as e:
        run_cli(train_gpt2.main, train_gpt2.Config)
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and "Traceback" not in err[0]
    assert err[0].startswith("error: the GPU ran out of memory (peak") and "lower --batch_size" in err[0]


def test_batch_size_auto_is_parsed_and_needs_a_gpu(corpus, cache, tmp_path):
    import train_gpt2
    from minitrain.config import parse_args

    assert parse_args(train_gpt2.Config, ["--batch_size", "auto"]).batch_size == "auto"
    with pytest.raises(UserError, match="--batch_size=0 must be a positive number"):
        parse_args(train_gpt2.Config, ["--batch_size=0"])
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="--batch_size=auto measures GPU memory; on a CPU give a number"):
            from tests.helpers import run_main

            run_main(corpus, tmp_path / "a", cache, batch_size="auto")
