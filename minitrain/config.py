"""One dataclass per script <-> command line: `--key=value`, `--key value`, `--config run.toml`.

The `--help` text of each option is the comment after its field in the dataclass source.
"""

import dataclasses
import difflib
import inspect
import os
import re
import sys
import tomllib
import types
import typing

from minitrain import UserError


def field_help(cls) -> dict[str, str]:
    """Map each field to the `# comment` that follows it in the class body."""
    helps = {}
    for line in inspect.getsource(cls).splitlines():
        m = re.match(r"\s+(\w+)\s*:[^#]*#\s*(.*)$", line)
        if m:
            helps[m.group(1)] = m.group(2).strip()
    return helps


def _base_type(tp):
    """`int | None` -> (int, True); `float` -> (float, False)."""
    if isinstance(tp, str):
        tp = eval(tp, vars(typing), {})  # annotations as strings ("int | None")
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        non_none = [a for a in args if a is not type(None)]
        return non_none[0], len(non_none) < len(args)
    return tp, False


def convert(name: str, raw, tp):
    """A command-line string (or TOML value) as the field's type, or one sentence of error."""
    base, optional = _base_type(tp)
    if optional and (raw is None or (isinstance(raw, str) and raw.lower() in ("none", "null", ""))):
        return None
    try:
        if base is bool:
            if isinstance(raw, bool):
                return raw
            value = str(raw).lower()
            if value in ("1", "true", "yes", "on"):
                return True
            if value in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if base is int and isinstance(raw, float):
            raise ValueError
        if base is int:
            return int(str(raw).replace("_", ""))
        return base(raw)
    except (TypeError, ValueError):
        raise UserError(
            f"--{name}={raw!r} is not a valid {base.__name__}; see --help for what it takes."
        ) from None


def _unknown(cls, key):
    names = [f.name for f in dataclasses.fields(cls)]
    close = difflib.get_close_matches(key, names, n=1)
    hint = f" (did you mean --{close[0]}?)" if close else ""
    raise UserError(f"unknown option --{key}{hint}; valid options: {', '.join(names)}.")


def format_help(cls, prog) -> str:
    helps = field_help(cls)
    lines = [f"usage: {prog} [--config FILE.toml] [--key=value ...]", ""]
    if cls.__doc__:
        lines += [cls.__doc__.strip(), ""]
    lines.append(
        "  --config FILE.toml  read options from a TOML file; flags given after override it"
    )
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        lines.append(f"  --{f.name} (default: {default!r})  {helps.get(f.name, '')}")
    return "\n".join(lines)


def parse_args(cls, argv=None):
    """Build a `cls` from argv (defaults < TOML file < flags). `--help` prints and exits 0."""
    argv = sys.argv[1:] if argv is None else list(argv)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    pairs, i = [], 0
    while i < len(argv):
        arg = argv[i]
        if arg in ("-h", "--help"):
            print(format_help(cls, sys.argv[0] if argv is sys.argv[1:] else cls.__module__))
            raise SystemExit(0)
        if not arg.startswith("--"):
            raise UserError(f"unexpected argument {arg!r}; options look like --key=value.")
        key, eq, value = arg[2:].partition("=")
        key = key.replace("-", "_")
        if not eq:
            nxt = argv[i + 1] if i + 1 < len(argv) else None
            is_bool = key in fields and _base_type(fields[key].type)[0] is bool
            if (
                nxt is not None
                and not nxt.startswith("--")
                and not (
                    is_bool
                    and nxt.lower() not in ("true", "false", "1", "0", "yes", "no", "on", "off")
                )
            ):
                value, i = nxt, i + 1
            elif is_bool:
                value = "true"  # a bare boolean flag switches it on
            elif key != "config":
                raise UserError(f"--{key} needs a value (--{key}=VALUE).")
        pairs.append((key, value))
        i += 1
    values = {}
    for key, value in pairs:
        if key == "config":
            values.update(read_toml(cls, value))
    for key, value in pairs:
        if key == "config":
            continue
        if key not in fields:
            _unknown(cls, key)
        values[key] = convert(key, value, fields[key].type)
    return cls(**values)


def read_toml(cls, path) -> dict:
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise UserError(f"config file {path} does not exist.") from None
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"config file {path} is not valid TOML ({e}).") from None
    fields = {f.name: f for f in dataclasses.fields(cls)}
    out = {}
    for key, value in data.items():
        if key not in fields:
            _unknown(cls, key)
        out[key] = convert(key, value, fields[key].type)
    return out


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def run_cli(main_fn, config_cls) -> None:
    """Parse the command line, run, and turn a UserError into one sentence and exit code 2."""
    try:
        main_fn(parse_args(config_cls))
    except UserError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        # Under torchrun, leave without Python's interpreter finalization: gloo's worker threads
        # can abort a process while it is torn down ("terminate called without an active
        # exception", cf. pytorch/pytorch#179291), which would turn a finished run into a failed
        # one. Everything is written and the process group is destroyed by now.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
