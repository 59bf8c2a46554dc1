"""The package's folders are its map, and imports only point down it:

    tools (and cli.py, the python -m shims)  ->  training  ->  data  ->  models  ->  base

base is minitrain/__init__.py, config.py, options.py and atomic.py. A module may import its own
layer and the layers below, never one above (imports inside functions count too)."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LAYERS = ["base", "models", "data", "training", "tools"]
BASE = {"minitrain", "minitrain.config", "minitrain.options", "minitrain.atomic"}


def layer_of(module: str) -> str:
    """The layer of a dotted module name inside the package."""
    if module in BASE:
        return "base"
    parts = module.split(".")
    if len(parts) > 1 and parts[1] in LAYERS:
        return parts[1]
    return "tools"  # cli.py and the one-line `python -m minitrain.<tool>` shims


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def imports(path: Path) -> list[tuple[int, str]]:
    """(line, imported module) for every `import minitrain...` / `from minitrain... import x` in a
    file; `from minitrain.pkg import mod` counts as importing minitrain.pkg.mod."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "minitrain"]
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "minitrain":
            for a in node.names:
                sub = f"{node.module}.{a.name}"
                is_module = (ROOT / (sub.replace(".", "/") + ".py")).is_file() or (
                    ROOT / sub.replace(".", "/")
                ).is_dir()
                found.append((node.lineno, sub if is_module else node.module))
    return found


def violations() -> list[str]:
    bad = []
    for path in sorted((ROOT / "minitrain").rglob("*.py")):
        mine = layer_of(module_name(path))
        for line, target in imports(path):
            theirs = layer_of(target)
            if LAYERS.index(theirs) > LAYERS.index(mine):
                bad.append(f"{path.relative_to(ROOT)}:{line} ({mine}) imports {target} ({theirs})")
    return bad


def test_imports_point_down_the_layers():
    assert violations() == []


def test_the_rule_catches_an_upward_import(tmp_path, monkeypatch):
    """The checker itself can fail: a models module that imports training is reported."""
    fake = tmp_path / "minitrain" / "models"
    fake.mkdir(parents=True)
    (fake / "bad.py").write_text("def f():\n    from minitrain.training import dist\n")
    (tmp_path / "minitrain" / "training").mkdir()
    (tmp_path / "minitrain" / "training" / "dist.py").write_text("")
    monkeypatch.setitem(globals(), "ROOT", tmp_path)
    assert violations() == ["minitrain/models/bad.py:2 (models) imports minitrain.training.dist (training)"]


def test_every_module_lives_in_a_layer_folder():
    """No new flat module: besides the base modules, cli.py and the `python -m` shims, everything
    lives in models/, data/, training/ or tools/."""
    shims = {"prepare", "evaluate", "generate", "report", "sweep"}
    flat = {p.stem for p in (ROOT / "minitrain").glob("*.py")} - {"__init__", "config", "options", "atomic", "cli"}
    assert flat <= shims
    for name in shims & flat:
        assert f'run_module("minitrain.tools.{name}"' in (ROOT / "minitrain" / f"{name}.py").read_text()
