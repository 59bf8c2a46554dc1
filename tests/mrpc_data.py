"""A small paraphrase data set, built from templates, written in each format train_mrpc accepts.

Label 1: the same statement reworded (active/passive voice, synonyms). Label 0: an unrelated
statement, or the same words with the meaning reversed (negation or swapped roles).
"""

import json
import random

NAMES = [
    "Alice",
    "Bob",
    "the mayor",
    "the teacher",
    "a farmer",
    "the doctor",
    "my neighbour",
    "the captain",
    "the chef",
    "a student",
    "the pilot",
    "the judge",
]
VERBS = [
    ("praised", "commended"),
    ("helped", "assisted"),
    ("called", "phoned"),
    ("visited", "went to see"),
    ("thanked", "expressed gratitude to"),
    ("criticised", "found fault with"),
    ("hired", "employed"),
    ("met", "encountered"),
]
WHEN = ["on Monday", "yesterday", "last week", "this morning", "in March", "after lunch"]


def make_pairs(n, seed):
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        a, b = rng.sample(NAMES, 2)
        verb, synonym = rng.choice(VERBS)
        when = rng.choice(WHEN)
        s1 = f"{a.capitalize()} {verb} {b} {when}."
        kind = rng.randrange(4)
        if kind == 0:
            s2, label = f"{b.capitalize()} was {verb} by {a} {when}.", 1
        elif kind == 1:
            s2, label = f"{when.capitalize()}, {a} {synonym} {b}.", 1
        elif kind == 2:
            c, d = rng.sample([x for x in NAMES if x not in (a, b)], 2)
            other, _ = rng.choice([v for v in VERBS if v[0] != verb])
            s2, label = f"{c.capitalize()} {other} {d} {rng.choice(WHEN)}.", 0
        else:
            s2, label = f'{a.capitalize()} never {verb} {b} {when}; it was "a rumour".', 0
        rows.append((s1, s2, label))
    return rows


HEADER = "Quality\t#1 ID\t#2 ID\t#1 String\t#2 String\n"


def write_glue(folder, train, dev, test=None, unlabelled_test=False):
    folder.mkdir(parents=True, exist_ok=True)
    for name, rows in (("train", train), ("dev", dev)):
        lines = [f"{y}\t{2 * i}\t{2 * i + 1}\t{a}\t{b}\n" for i, (a, b, y) in enumerate(rows)]
        (folder / f"{name}.tsv").write_text(HEADER + "".join(lines))
    if test is not None:
        if unlabelled_test:
            head = "index\t#1 ID\t#2 ID\t#1 String\t#2 String\n"
            lines = [f"{i}\t{2 * i}\t{2 * i + 1}\t{a}\t{b}\n" for i, (a, b, _) in enumerate(test)]
        else:
            head = HEADER
            lines = [f"{y}\t{2 * i}\t{2 * i + 1}\t{a}\t{b}\n" for i, (a, b, y) in enumerate(test)]
        (folder / "test.tsv").write_text(head + "".join(lines))
    return folder


def write_msr(folder, train, test):
    folder.mkdir(parents=True, exist_ok=True)
    for name, rows in (("msr_paraphrase_train.txt", train), ("msr_paraphrase_test.txt", test)):
        lines = [f"{y}\t{2 * i}\t{2 * i + 1}\t{a}\t{b}\n" for i, (a, b, y) in enumerate(rows)]
        (folder / name).write_text(HEADER + "".join(lines))
    return folder


def write_csv(folder, train, dev):
    import csv

    folder.mkdir(parents=True, exist_ok=True)
    for name, rows in (("train.csv", train), ("dev.csv", dev)):
        with open(folder / name, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["sentence1", "sentence2", "label"])
            w.writerows(rows)
    return folder


def write_jsonl(folder, train, dev):
    folder.mkdir(parents=True, exist_ok=True)
    for name, rows in (("train.jsonl", train), ("validation.jsonl", dev)):
        (folder / name).write_text(
            "".join(json.dumps({"sentence1": a, "sentence2": b, "label": y}) + "\n" for a, b, y in rows)
        )
    return folder
