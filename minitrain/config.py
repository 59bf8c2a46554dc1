"""One dataclass per script <-> command line: `--key=value`, `--key value`, `--config run.toml`.

The `--help` text of each option is the comment after its field in the dataclass source. What a
field accepts is declared in its type and checked here, for the command line, a TOML file and a
config built in Python alike:
    schedule: Literal["linear", "cosine", "constant"]   one of these values
    batch_size: PositiveInt                               Annotated[int, Range(gt=0)]
    dropout: Annotated[float, Range(ge=0, lt=1)]          any interval
Every float must also be finite.
"""

import dataclasses
import difflib
import inspect
import math
import re
import sys
import tomllib
import types
import typing
from typing import Annotated, Literal

from minitrain import UserError


@dataclasses.dataclass(frozen=True)
class Range:
    """Bounds of a numeric field: greater than / at least / less than / at most."""

    gt: float | None = None
    ge: float | None = None
    lt: float | None = None
    le: float | None = None

    def holds(self, v) -> bool:
        return (
            (self.gt is None or v > self.gt)
            and (self.ge is None or v >= self.ge)
            and (self.lt is None or v < self.lt)
            and (self.le is None or v <= self.le)
        )

    def describe(self) -> str:
        if self == Range(gt=0):
            return "a positive number"
        if self == Range(ge=0):
            return "not negative"
        if self.le is None and self.lt is None:
            return f"at least {self.ge:g}" if self.ge is not None else f"greater than {self.gt:g}"
        low = f"({self.gt:g}" if self.gt is not None else f"[{self.ge:g}" if self.ge is not None else "(-inf"
        high = f"{self.lt:g})" if self.lt is not None else f"{self.le:g}]" if self.le is not None else "inf)"
        return f"in {low}, {high}"


PositiveInt = Annotated[int, Range(gt=0)]
NonNegativeInt = Annotated[int, Range(ge=0)]
PositiveFloat = Annotated[float, Range(gt=0)]
NonNegativeFloat = Annotated[float, Range(ge=0)]
Fraction = Annotated[float, Range(ge=0, lt=1)]  # a share, or a dropout probability: 0 allowed, 1 not


@dataclasses.dataclass
class Spec:
    """What a field's type annotation says: the Python type, None allowed, choices, bounds."""

    base: type
    optional: bool = False
    choices: tuple = ()
    range: Range | None = None
    words: tuple = ()  # named values besides the type's (`int | Literal["auto"]`)


def spec(tp) -> Spec:
    """`Annotated[int, Range(gt=0)] | None` -> Spec(int, optional=True, range=Range(gt=0))."""
    optional, words = False, ()
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        optional, tp = len(args) < len(typing.get_args(tp)), args[0]
        words = tuple(w for a in args[1:] if typing.get_origin(a) is Literal for w in typing.get_args(a))
    rng = None
    if typing.get_origin(tp) is Annotated:
        tp, *extras = typing.get_args(tp)
        rng = next((e for e in extras if isinstance(e, Range)), None)
    if typing.get_origin(tp) is Literal:
        choices = typing.get_args(tp)
        return Spec(type(choices[0]), optional, choices, rng)
    return Spec(tp, optional, (), rng, words)


def field_specs(cls) -> dict[str, Spec]:
    hints = typing.get_type_hints(cls, include_extras=True)
    return {f.name: spec(hints[f.name]) for f in dataclasses.fields(cls)}


def check(cfg) -> None:
    """Refuse, with one sentence, a value outside what its field declares."""
    for name, s in field_specs(type(cfg)).items():
        value = getattr(cfg, name)
        if (value is None and s.optional) or value in s.words:
            continue
        if isinstance(value, str) and not _is_text(value):
            raise UserError(f"--{name} is not valid text (it holds bytes that are not UTF-8).")
        if s.choices and value not in s.choices:
            raise UserError(f"--{name}={value!r} is not one of {', '.join(map(str, s.choices))}.")
        if isinstance(value, float) and not math.isfinite(value):
            raise UserError(f"--{name}={value} must be a finite number.")
        if s.range is not None and not s.range.holds(value):
            must = "not be negative" if s.range == Range(ge=0) else f"be {s.range.describe()}"
            raise UserError(f"--{name}={value} must {must}.")


def _is_text(value: str) -> bool:
    try:
        value.encode("utf-8")  # a command line with non-UTF-8 bytes arrives as lone surrogates
        return True
    except UnicodeEncodeError:
        return False


def field_help(cls) -> dict[str, str]:
    """Map each field to the `# comment` that follows it in the class body; a field that a subclass
    declares again without a comment (a new default) keeps its base class's help."""
    helps = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass) or klass is object:
            continue
        for line in inspect.getsource(klass).splitlines():
            m = re.match(r"\s+(\w+)\s*:[^#]*#\s*(.*)$", line)
            if m:
                helps[m.group(1)] = m.group(2).strip()
    return helps


def group_of(cls, name: str) -> str:
    """The first line of the docstring of the class in cls's bases that declares the field first:
    the heading of its option group in --help."""
    for klass in reversed(cls.__mro__):
        if dataclasses.is_dataclass(klass) and name in klass.__dict__.get("__annotations__", {}):
            return "options" if klass is cls else (klass.__doc__ or klass.__name__).strip().splitlines()[0]
    return "options"


def positional(cls) -> tuple[str | None, str | None]:
    """(the field that takes bare arguments, the field that takes everything after `--`): list
    fields marked `field(metadata={"positional": True})` / `{"after_dashes": True}`, if any."""
    fields = dataclasses.fields(cls)
    bare = next((f.name for f in fields if f.metadata.get("positional")), None)
    rest = next((f.name for f in fields if f.metadata.get("after_dashes")), None)
    return bare, rest


def convert(name: str, raw, s: Spec):
    """A command-line string (or TOML value) as the field's type, or one sentence of error."""
    base = s.base
    if s.optional and (raw is None or (isinstance(raw, str) and raw.lower() in ("none", "null", "auto", ""))):
        return None
    if raw in s.words:
        return raw
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
        if isinstance(raw, bool) or (base is int and isinstance(raw, float)):
            raise ValueError  # TOML's `lr = true` is not 1.0, nor `batch_size = 2.5` 2
        if base in (int, float) and isinstance(raw, str) and not raw.isascii():
            raise ValueError  # int("١٢") is 12 and float("١.٥") 1.5 in Python: digits are 0-9 here
        if base is int:
            return int(str(raw).replace("_", ""))
        return base(raw)
    except (TypeError, ValueError):
        raise UserError(f"--{name}={raw!r} is not a valid {base.__name__}; see --help for what it takes.") from None


def _unknown(cls, key):
    names = [f.name for f in dataclasses.fields(cls)]
    close = difflib.get_close_matches(key, names, n=1)
    hint = f" (did you mean --{close[0]}?)" if close else ""
    raise UserError(f"unknown option --{key}{hint}; valid options: {', '.join(names)}.")


def format_help(cls, prog) -> str:
    helps, specs = field_help(cls), field_specs(cls)
    bare, rest = positional(cls)
    usage = f"usage: {prog} [--config FILE.toml] [--key=value ...]"
    usage += f" {bare.upper()} [...]" if bare else ""
    usage += f" -- [{rest.replace('_', ' ')} ...]" if rest else ""
    lines = [usage, ""]
    if cls.__doc__:
        lines += [cls.__doc__.strip(), ""]
    lines.append("  --config FILE.toml  read options from a TOML file; flags given after override it")
    heading = None
    for f in dataclasses.fields(cls):
        if f.name in (bare, rest):
            lines.append(f"  {f.name.upper() if f.name == bare else '-- ...'}  {helps.get(f.name, '')}")
            continue
        group = group_of(cls, f.name)
        if group != heading:
            heading = group
            lines += ["", f" {group}:"]
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        s = specs[f.name]
        accepts = f"; one of {', '.join(map(str, s.choices))}" if s.choices else ""
        accepts += f"; {s.range.describe()}" if s.range else ""
        accepts += f" or {' or '.join(s.words)}" if s.words else ""
        lines.append(f"  --{f.name} (default: {default!r}{accepts})  {helps.get(f.name, '')}")
    return "\n".join(lines)


def parse_args(cls, argv=None):
    """Build a checked `cls` from argv (defaults < TOML file < flags). `--help` prints and exits 0."""
    prog = sys.argv[0] if argv is None else cls.__module__
    argv = sys.argv[1:] if argv is None else list(argv)
    specs = field_specs(cls)
    bare, rest = positional(cls)
    after = []
    if rest and "--" in argv:
        cut = argv.index("--")
        argv, after = argv[:cut], argv[cut + 1 :]
    pairs, bare_args, i = [], [], 0
    while i < len(argv):
        arg = argv[i]
        if arg in ("-h", "--help"):
            print(format_help(cls, prog))
            raise SystemExit(0)
        if not arg.startswith("--") and bare:
            bare_args.append(arg)
            i += 1
            continue
        if not arg.startswith("--"):
            raise UserError(f"unexpected argument {arg!r}; options look like --key=value.")
        key, eq, value = arg[2:].partition("=")
        key = key.replace("-", "_")
        if not eq:
            nxt = argv[i + 1] if i + 1 < len(argv) else None
            is_bool = key in specs and specs[key].base is bool
            words = {"true", "false", "1", "0", "yes", "no", "on", "off"}
            if key in specs and specs[key].optional:
                words |= {"auto", "none"}  # an optional bool (None: decided at run time)
            bool_word = nxt is not None and nxt.lower() in words
            if nxt is not None and not nxt.startswith("--") and (not is_bool or bool_word):
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
        if key not in specs or key in (bare, rest):
            _unknown(cls, key)
        values[key] = convert(key, value, specs[key])
    if bare and bare_args:
        values[bare] = bare_args
    if rest:
        values[rest] = after
    cfg = cls(**values)
    check(cfg)
    return cfg


def read_toml(cls, path) -> dict:
    try:
        with open(path, "rb") as f:
            text = f.read().decode("utf-8")
        data = tomllib.loads(text)
    except FileNotFoundError:
        raise UserError(f"config file {path} does not exist.") from None
    except IsADirectoryError:
        raise UserError(f"config file {path} is a folder; pass a .toml file.") from None
    except OSError as e:
        raise UserError(f"config file {path} cannot be read ({e.strerror}).") from None
    except UnicodeDecodeError:
        raise UserError(f"config file {path} is not UTF-8 text, so it is not a TOML file.") from None
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"config file {path} is not valid TOML ({e}).") from None
    specs = field_specs(cls)
    out = {}
    for key, value in data.items():
        if key not in specs:
            _unknown(cls, key)
        _check_toml_type(path, text, key, value, specs[key])
        out[key] = convert(key, value, specs[key])
    return out


def _check_toml_type(path, text: str, key: str, value, s: Spec) -> None:
    """TOML has types: a number in quotes where a number belongs is a mistake (`lr = "1e-3"`), as
    `lr = true` is, and so is a number where text belongs (`out_dir = 5`). Named values (`"auto"`,
    and "none" for an option that may be unset) are the strings a number field takes."""
    if isinstance(value, str) and (value in s.words or (s.optional and value.lower() in ("none", "null", "auto", ""))):
        return
    base = typing.get_origin(s.base) or s.base
    wanted = {
        bool: ("true or false", lambda v: isinstance(v, bool)),
        int: ("an integer", lambda v: type(v) is int),
        float: ("a number", lambda v: type(v) in (int, float)),
        str: ("text in quotes", lambda v: isinstance(v, str)),
        list: ("a list of texts in quotes", lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v)),
    }.get(base)
    if wanted is None or wanted[1](value):
        return
    kinds = {bool: "a boolean", int: "an integer", float: "a number", str: "text in quotes", list: "a list"}
    kind = kinds.get(type(value), "a table" if isinstance(value, dict) else type(value).__name__)
    line = next((f":{n}" for n, t in enumerate(text.splitlines(), 1) if re.match(rf"\s*{re.escape(key)}\s*=", t)), "")
    raise UserError(f"config file {path}{line}: {key} = {value!r} is {kind}, but --{key} takes {wanted[0]}.")
