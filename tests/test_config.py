"""minitrain/config.py: the command line, TOML files, and the checks declared on the fields."""

import subprocess

import pytest

import train_gpt2
from minitrain import UserError
from minitrain.config import check, parse_args
from tests.helpers import PY, ROOT


def test_cli_help_toml_and_unknown_key(tmp_path):
    out = subprocess.run([PY, str(ROOT / "train_gpt2.py"), "--help"], capture_output=True, text=True)
    assert out.returncode == 0
    assert "--grad_accum_steps (default: 1; a positive number)  micro-batches per optimizer step" in out.stdout
    toml = tmp_path / "run.toml"
    toml.write_text('lr = 0.01\nbatch_size = 3\nschedule = "linear"\ncompile = true\n')
    cfg = parse_args(train_gpt2.Config, ["--config", str(toml), "--batch_size", "5", "--compile=false"])
    assert (cfg.lr, cfg.batch_size, cfg.schedule, cfg.compile) == (0.01, 5, "linear", False)
    out = subprocess.run([PY, str(ROOT / "train_gpt2.py"), "--batch_sise=4"], capture_output=True, text=True)
    assert out.returncode == 2
    assert "unknown option --batch_sise (did you mean --batch_size?)" in out.stderr
    assert "Traceback" not in out.stderr
    out = subprocess.run([PY, str(ROOT / "train_gpt2.py"), "--lr=fast"], capture_output=True, text=True)
    assert out.returncode == 2 and "--lr='fast' is not a valid float" in out.stderr


def test_help_lists_the_choices_and_bounds():
    import train_mrpc
    from minitrain.config import format_help

    for cls in (train_gpt2.Config, train_mrpc.Config):
        text = format_help(cls, "x")
        assert "--schedule (default: " in text and "one of linear, cosine, constant)" in text
        assert "--ddp (default: 'minitrain'; one of minitrain, torch)" in text
        assert "--dtype (default: 'auto'; one of auto, bf16, fp16, fp32)" in text
        assert "--batch_size (default: " in text and "; a positive number)" in text
    assert "--dropout (default: 0.0; in [0, 1))" in format_help(train_gpt2.Config, "x")


@pytest.mark.parametrize(
    "values,message",
    [
        (dict(batch_size=0), "--batch_size=0 must be a positive number."),
        (dict(lr=-1.0), "--lr=-1.0 must be a positive number."),
        (dict(lr=float("nan")), "--lr=nan must be a finite number."),
        (dict(epochs=float("inf")), "--epochs=inf must be a finite number."),
        (dict(warmup_steps=-1), "--warmup_steps=-1 must not be negative."),
        (dict(dropout=1.0), "--dropout=1.0 must be in [0, 1)."),
        (dict(beta2=1.0), "--beta2=1.0 must be in [0, 1)."),
        (dict(val_fraction=0.0), "--val_fraction=0.0 must be in (0, 1)."),
        (dict(top_p=0.0), "--top_p=0.0 must be in (0, 1]."),
        (dict(schedule="wavy"), "--schedule='wavy' is not one of linear, cosine, constant."),
        (dict(dtype="fp8"), "--dtype='fp8' is not one of auto, bf16, fp16, fp32."),
        (dict(ddp="horovod"), "--ddp='horovod' is not one of minitrain, torch."),
    ],
)
def test_declared_checks_refuse_with_one_sentence(values, message):
    with pytest.raises(UserError) as e:
        check(train_gpt2.Config(**values))
    assert str(e.value) == message
    # the command line gets the same sentence
    argv = [f"--{k}={v}" for k, v in values.items()]
    with pytest.raises(UserError) as e:
        parse_args(train_gpt2.Config, argv)
    assert str(e.value) == message


def test_mrpc_optional_dropout_is_checked_when_set():
    import train_mrpc

    check(train_mrpc.Config(dropout=None))
    with pytest.raises(UserError, match=r"--dropout=1.5 must be in \[0, 1\)"):
        parse_args(train_mrpc.Config, ["--dropout=1.5"])
    assert parse_args(train_mrpc.Config, ["--dropout=none"]).dropout is None


@pytest.mark.parametrize(
    "toml,message",
    [
        ("lr = true", "lr = True is a boolean, but --lr takes a number"),
        ("batch_size = 2.5", "batch_size = 2.5 is a number, but --batch_size takes an integer"),
        ('schedule = "wavy"', "--schedule='wavy' is not one of"),
        ("batch_size = 0", "--batch_size=0 must be a positive number"),
        ("bach_size = 4", "unknown option --bach_size (did you mean --batch_size?)"),
    ],
)
def test_toml_values_are_checked_like_flags(tmp_path, toml, message):
    path = tmp_path / "run.toml"
    path.write_text(toml + "\n")
    with pytest.raises(UserError) as e:
        parse_args(train_gpt2.Config, ["--config", str(path)])
    assert message in str(e.value)
