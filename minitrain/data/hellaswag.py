"""HellaSwag examples from a file in the layout of hellaswag_val.jsonl."""

import json
from pathlib import Path

from minitrain import UserError
from minitrain.data import sources


def read_hellaswag(path) -> list:
    """(context, endings, label) of each line of a file in the layout of hellaswag_val.jsonl:
    {"ctx": ..., "endings": [4 strings], "label": 0..3, ...}."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"--data={path} is not a file; HellaSwag needs a .jsonl such as hellaswag_val.jsonl.")
    examples = []
    for n, line in enumerate(sources.read_lines(path, "--data"), start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"{path}:{n}: not a JSON object ({e.msg}).") from None
        ok = isinstance(rec, dict) and isinstance(rec.get("ctx"), str) and isinstance(rec.get("endings"), list)
        ok = ok and len(rec["endings"]) >= 2 and all(isinstance(e, str) for e in rec["endings"])
        label = rec.get("label") if ok else None  # an integer: not true/false, not "2" (a string)
        if type(label) is not int or not 0 <= label < len(rec["endings"]):
            raise UserError(
                f"{path}:{n}: needs ctx (text), endings (a list of texts) and label (the right ending's index)."
            )
        examples.append((rec["ctx"], rec["endings"], rec["label"]))
    if not examples:
        raise UserError(f"{path} has no examples.")
    if len({len(e[1]) for e in examples}) > 1:
        raise UserError(f"{path}: every example needs the same number of endings.")
    return examples
