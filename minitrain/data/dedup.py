"""Keeping or removing each document, in source order, in one place: the main process of a prepare.

The workers measure pieces (minitrain.data.clean); `Cleaner` assembles a document from its pieces,
applies the quality filters, then the duplicate rules, and remembers what it keeps. Rules are tried
in RULES order and a document is counted under the first that removes it. A document is a copy when
an earlier kept one has the same normalised text (exact), or, with --dedup near, shares an LSH band
with an earlier kept one whose signatures agree on at least --near_threshold of their entries.

Memory grows with the number of documents kept, never with their size:
- exact: 8 bytes of the digest and 8 of the document's number, in one sorted numpy array, the
  newest keys in a dict until they are merged in (KeyIndex): ~16-20 bytes a document;
- near: besides, each LSH band's 8-byte key and a 4-byte signature number (bands x 12 bytes, 14
  bands at 0.8), the owner's 8-byte number, and the signature (128 x 16 bits, 256 bytes) written
  to an unnamed temporary file in the work folder and read back only to verify a candidate;
- a document longer than one piece: its ids wait in memory up to 64 MB, then in such a file (Held),
  and at most MAX_LINES of its line hashes are kept for the repeated-lines filter.
"""

import array
import hashlib
import os
import tempfile
from pathlib import Path

import numpy as np

from minitrain.data.clean import SHINGLE, band_keys, lsh_params, minhash, shingles

RULES = ("min_words", "non_alpha", "dup_lines", "word_length", "exact", "near")  # in the order they are tried
SAMPLE_CHARS = 20_000  # of a removed document's text in removed.jsonl
MAX_LINES = 1_000_000  # line hashes kept of one document (8 MB): the share of repeated lines is of these
MAX_CANDIDATES = 64  # earlier documents verified for one document (a band shared by many is boilerplate)


class KeyIndex:
    """uint64 key -> the values added with it, in insertion order: the newest in a dict, the rest in
    sorted numpy arrays that the dict is merged into whenever it holds a 32nd of them (so the
    copying adds up to ~33 x the final size, and the dict stays a small share of the memory)."""

    def __init__(self, value_dtype=np.int64):
        self.recent: dict[int, list[int]] = {}
        self.keys, self.values = np.zeros(0, np.uint64), np.zeros(0, value_dtype)

    def __len__(self) -> int:
        return len(self.keys) + sum(map(len, self.recent.values()))

    def get(self, key: int) -> list[int]:
        found = []
        if len(self.keys):
            # searched as a uint64: numpy takes a Python int below 2**63 as an int64 and would
            # convert the whole array to float64 on every call (a search that costs O(n))
            k = np.uint64(key)
            a = int(np.searchsorted(self.keys, k, "left"))
            if a < len(self.keys) and int(self.keys[a]) == key:
                b = int(np.searchsorted(self.keys, k, "right"))
                found = self.values[a:b].tolist()
        return found + self.recent.get(key, [])

    def add(self, key: int, value: int) -> None:
        self.recent.setdefault(key, []).append(value)
        if len(self.recent) >= max(1 << 14, len(self.keys) // 32):
            self._merge()

    def _merge(self) -> None:
        keys = np.fromiter((k for k, vs in self.recent.items() for _ in vs), np.uint64)
        values = np.fromiter((v for vs in self.recent.values() for v in vs), self.values.dtype)
        order = np.argsort(keys, kind="stable")
        keys, values = keys[order], values[order]
        at = np.searchsorted(self.keys, keys, "right")  # after equal older keys: insertion order kept
        self.keys, self.values = np.insert(self.keys, at, keys), np.insert(self.values, at, values)
        self.recent = {}


class Signatures:
    """Kept documents' MinHash signatures, the low 16 bits of each entry (two different minima agree
    there by chance once in 65,536: the similarity is over-estimated by < 0.00002), in an unnamed
    temporary file; the newest CHUNK in memory."""

    CHUNK = 4096

    def __init__(self, folder: Path, width: int):
        self.file = tempfile.TemporaryFile(dir=folder)
        self.width, self.buffer, self.n, self.flushed = width, [], 0, 0

    def add(self, sig: np.ndarray) -> int:
        self.buffer.append(sig.astype(np.uint16))
        self.n += 1
        if len(self.buffer) == self.CHUNK:
            self.file.write(np.stack(self.buffer).tobytes())
            self.file.flush()
            self.flushed, self.buffer = self.n, []
        return self.n - 1

    def get(self, i: int) -> np.ndarray:
        if i >= self.flushed:
            return self.buffer[i - self.flushed]
        raw = os.pread(self.file.fileno(), self.width * 2, i * self.width * 2)
        return np.frombuffer(raw, np.uint16)

    def close(self) -> None:
        self.file.close()


class Held:
    """A document's ids until its last piece decides it: in memory up to SPILL ids, then in an
    unnamed temporary file in the work folder, so a document of any length passes."""

    SPILL = 1 << 24

    def __init__(self, folder: Path):
        self.folder, self.parts, self.n, self.in_memory, self.file = folder, [], 0, 0, None

    def add(self, ids: np.ndarray) -> None:
        self.parts.append(ids)
        self.n, self.in_memory = self.n + len(ids), self.in_memory + len(ids)
        if self.in_memory > self.SPILL:
            self.file = self.file or tempfile.TemporaryFile(dir=self.folder)
            for p in self.parts:
                self.file.write(p.astype(np.uint32).tobytes())
            self.parts, self.in_memory = [], 0

    def drain(self, writer) -> None:
        if self.file is not None:
            self.file.seek(0)
            while chunk := self.file.read(1 << 22):
                writer.add(np.frombuffer(chunk, np.uint32))
        for p in self.parts:
            writer.add(p)
        self.drop()

    def drop(self) -> None:
        if self.file is not None:
            self.file.close()
        self.parts, self.n, self.in_memory, self.file = [], 0, 0, None


class Doc:
    """A finished document's numbers: counts (words, non-space characters, letters, characters in
    repeated lines, characters in lines), exact digest, MinHash signature and band keys."""

    __slots__ = ("counts", "digest", "sig", "bands", "text")

    def __init__(self, counts, digest, sig, bands, text):
        self.counts, self.digest, self.sig, self.bands, self.text = counts, digest, sig, bands, text


class Assembly:
    """A document longer than one piece, put together piece by piece (see clean.py's docstring)."""

    def __init__(self):
        self.counts, self.hash, self.empty = [0, 0, 0], hashlib.blake2b(digest_size=8), True
        self.lines, self.lens, self.kept_lines = [], [], 0
        self.sig, self.tail, self.start, self.text = None, np.zeros(0, np.uint64), np.zeros(0, np.uint64), []

    def add(self, feats, i: int, text: str, cleaner: "Cleaner") -> None:
        for k in range(3):
            self.counts[k] += int(feats.counts[i, k])
        parts = feats.parts[i]
        if cleaner.exact is not None and parts.words:  # the digest of the whole: its pieces' words, space-joined
            if not self.empty:
                self.hash.update(b" ")
            self.hash.update(parts.words)
            self.empty = False
        room = MAX_LINES - self.kept_lines
        if room > 0 and len(parts.line_hashes):
            self.lines.append(parts.line_hashes[:room])
            self.lens.append(parts.line_chars[:room])
            self.kept_lines += len(self.lines[-1])
        if feats.sigs is not None:
            self.sig = feats.sigs[i] if self.sig is None else np.minimum(self.sig, feats.sigs[i])
            window = np.concatenate([self.tail, parts.head])  # the shingles across the cut
            if len(self.tail) and len(window) >= SHINGLE:
                self.sig = np.minimum(self.sig, minhash(shingles(window, len(self.tail))).min(axis=0))
            words = int(feats.counts[i, 0])
            self.tail = parts.tail if words >= SHINGLE - 1 else window[-(SHINGLE - 1) :]
            self.start = np.concatenate([self.start, parts.head])[:SHINGLE]
        if cleaner.keep and sum(map(len, self.text)) < SAMPLE_CHARS:
            self.text.append(text[:SAMPLE_CHARS])

    def finish(self, cleaner: "Cleaner") -> Doc:
        counts = self.counts + [0, 0]
        if self.lines:
            hashes, lens = np.concatenate(self.lines), np.concatenate(self.lens)
            _, first = np.unique(hashes, return_index=True)
            counts[4] = int(lens.sum())
            counts[3] = counts[4] - int(lens[first].sum())
        sig = bands = None
        if self.sig is not None:
            sig = self.sig
            if 0 < counts[0] < SHINGLE:  # one shingle of all its words
                sig = minhash(shingles(self.start)).min(axis=0)
            bands = band_keys(sig[None], cleaner.bands_rows[0], cleaner.bands_rows[1])[0]
        digest = int.from_bytes(self.hash.digest(), "little")
        return Doc(counts, digest, sig, bands, "".join(self.text)[:SAMPLE_CHARS])


def whole(feats, i: int, text: str) -> Doc:
    """The Doc of piece i of a batch, a whole document."""
    sig = feats.sigs[i] if feats.sigs is not None else None
    bands = feats.bands[i] if feats.bands is not None else None
    return Doc(feats.counts[i].tolist(), int(feats.digests[i]), sig, bands, text)


def key_of(split: str, ordinal: int) -> int:
    return ordinal * 2 + (split == "val")


def name_of(key: int) -> dict:
    return {"split": "val" if key % 2 else "train", "document": key // 2}


class Cleaner:
    """The keep/remove decision of each document of a prepare, its counts and its samples."""

    def __init__(self, opts, folder: Path, keep: int = 0):
        self.opts, self.keep = opts, keep
        self.exact = KeyIndex() if opts.dedup != "none" else None
        self.near = opts.dedup == "near"
        if self.near:
            self.bands_rows = lsh_params(opts.near_threshold)
            self.bands, self.sigs, self.owner = KeyIndex(np.uint32), Signatures(folder, 128), array.array("q")
        self.removed = {rule: {s: [0, 0] for s in ("train", "val")} for rule in RULES}
        self.copies_of_val = {"exact": 0, "near": 0}
        self.samples = {rule: [] for rule in RULES}
        self.assembly = None

    def piece(self, feats, i: int, text: str) -> None:
        """A piece of a document longer than one piece (its last one included)."""
        self.assembly = self.assembly or Assembly()
        self.assembly.add(feats, i, text, self)

    def doc(self, feats, i: int, text: str, whole_piece: bool) -> Doc:
        """The finished document whose last piece is piece i."""
        if whole_piece and self.assembly is None:
            return whole(feats, i, text)
        self.piece(feats, i, text)
        doc, self.assembly = self.assembly.finish(self), None
        return doc

    def judge(self, doc: Doc, key: int) -> tuple[str | None, dict]:
        """(the rule that removes the document, what it found), or (None, {}) and it is remembered."""
        o = self.opts
        words, nonspace, letters, repeated, in_lines = doc.counts
        if o.filters:
            if words < o.min_words:
                return "min_words", {"words": words}
            share = (nonspace - letters) / nonspace if nonspace else 0.0
            if share > o.max_non_alpha:
                return "non_alpha", {"non_alpha": round(share, 4)}
            share = repeated / in_lines if in_lines else 0.0
            if share > o.max_dup_lines:
                return "dup_lines", {"dup_lines": round(share, 4)}
            mean = nonspace / words if words else 0.0
            if o.max_word_length and mean > o.max_word_length:
                return "word_length", {"word_length": round(mean, 2)}
        if self.exact is None:
            return None, {}
        if earlier := self.exact.get(doc.digest):
            return "exact", {"copy_of": name_of(earlier[0])}
        if self.near:
            low, seen = doc.sig.astype(np.uint16), set()
            for band in doc.bands.tolist():
                for n in self.bands.get(band):
                    if n in seen or len(seen) >= MAX_CANDIDATES:
                        continue
                    seen.add(n)
                    similarity = float((self.sigs.get(n) == low).mean())
                    if similarity >= o.near_threshold:
                        return "near", {"copy_of": name_of(self.owner[n]), "similarity": round(similarity, 4)}
            n = self.sigs.add(doc.sig)
            self.owner.append(key)
            for band in doc.bands.tolist():
                self.bands.add(band, n)
        self.exact.add(doc.digest, key)
        return None, {}

    def count(self, rule: str, split: str, tokens: int, found: dict) -> None:
        self.removed[rule][split][0] += 1
        self.removed[rule][split][1] += tokens
        if split == "train" and found.get("copy_of", {}).get("split") == "val":
            self.copies_of_val[rule] += 1

    def sample(self, rule: str, key: int, doc: Doc, found: dict) -> None:
        if len(self.samples[rule]) < self.keep:
            text = doc.text[:SAMPLE_CHARS]
            self.samples[rule].append({"rule": rule, **name_of(key), **found, "text": text})

    def report(self) -> dict:
        """meta.json's "clean": per rule, the documents and tokens (with their end-of-text) removed."""
        out = {}
        for rule in RULES:
            r = self.removed[rule]
            out[rule] = {s: {"documents": r[s][0], "tokens": r[s][1]} for s in ("train", "val")}
            if rule in self.copies_of_val:
                out[rule]["train_copies_of_val"] = self.copies_of_val[rule]
        return out

    def close(self) -> None:
        if self.near:
            self.sigs.close()
