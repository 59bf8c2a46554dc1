"""What cleaning measures of each piece of text, and the hashes that find copies. Runs in the
tokenizing worker processes (numpy only, never torch), on a whole batch of pieces at once.

Normalised text, the form both the filters and the duplicate rules read: Unicode NFKC (full-width
letters, ligatures and compatibility forms become their plain letters), casefolded, and cut into
words at whitespace (str.isspace). Exact duplicates compare the words joined by single spaces
(whitespace runs collapsed, ends stripped), by 8 bytes of BLAKE2b. Lines are cut at "\\n".

A piece of a document ends right after a line break (minitrain.data.sources cuts them so), so no
word, line or normalisation spans two pieces: counts add up over a document's pieces, and a
piece that is a whole document (almost all of them) is judged from this module's numbers alone.
For a longer document, `Parts` carries what the main process needs to finish it
(minitrain.data.dedup): its normalised words (UTF-8, joined by single spaces: the main process
feeds them, in order, to the document's BLAKE2b, so the digest is the whole document's wherever
the cuts fall), its lines' hashes and its first and last words.

Near duplicates: MinHash (Broder 1997) over word 5-gram shingles, NUM_PERM hash functions of the
multiply-add-shift family (Dietzfelbinger et al. 1997) on a 64-bit shingle hash; the signature of a
document is the minimum of each function over all its shingles, so pieces combine by a minimum
(and the few shingles across a cut are added by the main process): a document of any length is
streamed, never capped. A document of fewer than 5 words is one shingle of all its words.
"""

import functools
import hashlib
import unicodedata
from dataclasses import dataclass, field

import numpy as np

NUM_PERM = 128  # MinHash functions: the estimate's standard error is sqrt(J (1 - J) / 128), 0.035 at J = 0.8
SHINGLE = 5  # words per shingle (Gopher, RefinedWeb and datatrove dedup on word 5-grams)
CHUNK = 4096  # shingles hashed at a time: CHUNK x NUM_PERM x 8 bytes (4 MB) of temporaries

_rng = np.random.default_rng(27)  # fixed: the same hashes in every process and run
PERM_A = _rng.integers(1, 2**63, NUM_PERM, dtype=np.uint64) * np.uint64(2) + np.uint64(1)  # odd multipliers
PERM_B = _rng.integers(0, 2**63, NUM_PERM, dtype=np.uint64)
MIX = _rng.integers(1, 2**63, 16, dtype=np.uint64) * np.uint64(2) + np.uint64(1)  # odd constants, one per role:
CHAR_M, POS_M, LINE_M, BAND_I = MIX[0], MIX[1], MIX[2], MIX[3]  # a character, its place, a word's place, a band
WORD_M, SHORT_M = MIX[4 : 4 + SHINGLE], MIX[4 + SHINGLE : 4 + 2 * SHINGLE]  # a word's place in a shingle; k < 5 words
BAND_M = _rng.integers(1, 2**63, NUM_PERM, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
_SPACE = np.array([chr(i).isspace() for i in range(128)])
_ALPHA = np.array([chr(i).isalpha() for i in range(128)])


def fmix64(x: np.ndarray) -> np.ndarray:
    """MurmurHash3's 64-bit finaliser, on arrays (uint64 arithmetic wraps, as intended)."""
    x = x ^ (x >> np.uint64(33))
    x = x * np.uint64(0xFF51AFD7ED558CCD)
    x = x ^ (x >> np.uint64(33))
    x = x * np.uint64(0xC4CEB9FE1A85EC53)
    return x ^ (x >> np.uint64(33))


def normalise(text: str) -> str:
    return unicodedata.normalize("NFKC", text).casefold()


def joined(text: str) -> str:
    """A piece's normalised words joined by single spaces: what exact duplicates compare."""
    return " ".join(normalise(text).split())


def words_of(norm: str) -> bytes:
    """`joined` of a normalised piece, as UTF-8: in numpy when the piece is ASCII (~3x faster than
    str.split and join: no word objects), whitespace as str.isspace says."""
    if not norm.isascii():
        return " ".join(norm.split()).encode()
    chars = np.frombuffer(norm.encode(), np.uint8)
    space = _SPACE[chars]
    keep = ~space
    keep[1:] |= space[1:] & ~space[:-1]  # a whitespace run's first character, as one space
    return np.where(space, np.uint8(32), chars)[keep].tobytes().strip(b" ")


def digest(words: str | bytes) -> int:
    data = words.encode() if isinstance(words, str) else words
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little")


def _classes(cps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(whitespace, letter) per code point, as str.isspace / str.isalpha say."""
    low = np.minimum(cps, 127)
    space, alpha = _SPACE[low], _ALPHA[low]
    high = cps >= 128
    if high.any():  # few distinct code points beyond ASCII: ask Python once for each
        u, inv = np.unique(cps[high], return_inverse=True)
        chars = [chr(c) for c in u.tolist()]
        space[high] = np.array([c.isspace() for c in chars])[inv]
        alpha[high] = np.array([c.isalpha() for c in chars])[inv]
    return space, alpha


def shingles(words: np.ndarray, n: int | None = None) -> np.ndarray:
    """64-bit hashes of the SHINGLE-word windows of a run of word hashes (or, for a run of fewer
    words, of the one window of all of them; `n` < len(words) keeps only windows starting below n)."""
    k = len(words)
    if k < SHINGLE:
        return fmix64(np.array([np.append(words * WORD_M[:k], SHORT_M[k]).sum(dtype=np.uint64)], np.uint64))
    starts = k - SHINGLE + 1 if n is None else min(n, k - SHINGLE + 1)
    s = np.zeros(starts, np.uint64)
    for j in range(SHINGLE):
        s += words[j : j + starts] * WORD_M[j]
    return fmix64(s)


def minhash(s: np.ndarray) -> np.ndarray:
    """(len(s), NUM_PERM) uint32: each shingle hash under each function (the high 32 bits of a*s + b)."""
    return ((s[:, None] * PERM_A[None, :] + PERM_B[None, :]) >> np.uint64(32)).astype(np.uint32)


def band_keys(sig: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """(n, bands) uint64 LSH bucket keys of (n, NUM_PERM) signatures: a hash of each band's rows."""
    part = sig[:, : bands * rows].reshape(len(sig), bands, rows).astype(np.uint64)
    mixed = (part * BAND_M[: bands * rows].reshape(bands, rows)).sum(axis=2, dtype=np.uint64)
    return fmix64(mixed + np.arange(bands, dtype=np.uint64) * BAND_I)


@functools.lru_cache
def lsh_params(threshold: float, num_perm: int = NUM_PERM) -> tuple[int, int]:
    """(bands, rows) for a Jaccard threshold: the pair with the least weighted false-positive plus
    false-negative area under the S-curve 1 - (1 - J^r)^b (datasketch's _optimal_param), the misses
    weighted 0.9 and the false candidates 0.1: every candidate is verified on its signature, so a
    false candidate costs one comparison, a miss keeps a copy. At 0.8: 14 bands of 9 rows, which
    find a pair at Jaccard 0.8 / 0.85 / 0.9 with probability 0.87 / 0.975 / 0.999 (equal weights'
    9 x 13: 0.40 / 0.69 / 0.93)."""
    best, grid = None, np.linspace(0, 1, 2001)
    for b in range(1, num_perm + 1):
        for r in range(1, num_perm // b + 1):
            p = 1 - (1 - grid**r) ** b
            err = np.trapezoid(np.where(grid < threshold, 0.1 * p, 0.9 * (1 - p)), grid)
            if best is None or err < best[0] - 1e-12:
                best = (err, b, r)
    return best[1], best[2]


@dataclass
class Parts:
    """What the main process needs of a piece that is not a whole document."""

    words: bytes  # the normalised words joined by single spaces, UTF-8 (empty without --dedup)
    line_hashes: np.ndarray
    line_chars: np.ndarray
    head: np.ndarray  # the first SHINGLE - 1 word hashes (fewer in a shorter piece)
    tail: np.ndarray  # the last SHINGLE - 1


@dataclass
class Features:
    """Of each piece of a batch: counts (words, non-space characters, letters, characters in
    repeated lines, characters in lines); of a whole document its exact digest, MinHash signature
    and LSH band keys; of the other pieces their Parts. Arrays per piece, so cheap to send back."""

    counts: np.ndarray
    digests: np.ndarray
    sigs: np.ndarray | None
    bands: np.ndarray | None
    parts: dict = field(default_factory=dict)


def analyse(texts: list[str], whole: list[bool], opts) -> Features:
    """The features of a batch of pieces (`whole[i]`: piece i is a whole document). Characters are
    classified over the whole batch at once (only when a filter or --dedup near reads the counts):
    the normalised pieces joined by "\\n" (no word crosses it) as one array of code points; lines
    are C-level string work per piece, the words of the exact rule `words_of`."""
    n = len(texts)
    norms = [normalise(t) for t in texts]
    counts = np.zeros((n, 5), np.int64)
    digests = np.zeros(n, np.uint64)
    feats = Features(counts, digests, None, None)
    if opts.filters or opts.dedup == "near":
        sizes = np.fromiter(map(len, norms), np.int64, n)
        begin = np.concatenate([[0], np.cumsum(sizes + 1)[:-1]]).astype(np.int64)
        cps = np.frombuffer("\n".join(norms).encode("utf-32-le"), np.uint32)
        space, alpha = _classes(cps)
        word = ~space
        first = word.copy()
        first[1:] &= space[:-1]
        last = word.copy()
        last[:-1] &= space[1:]
        if len(cps):  # each piece's range runs on to the next one's start: the "\n" between adds nothing
            counts[:, 0] = np.add.reduceat(first, begin, dtype=np.int64)
            counts[:, 1] = np.add.reduceat(word, begin, dtype=np.int64)
            counts[:, 2] = np.add.reduceat(alpha & word, begin, dtype=np.int64)
    by_line = opts.filters and opts.max_dup_lines < 1
    empty, exact = np.zeros(0, np.uint64), opts.dedup != "none"
    for i in range(n):
        found = lines(norms[i]) if by_line else None
        # the words joined by single spaces (with the lines cut: the non-empty lines so joined)
        words = b""
        if exact:
            words = " ".join(filter(None, found)).encode() if by_line else words_of(norms[i])
        if whole[i]:
            if by_line:  # repeated characters: all lines' minus each distinct line's once
                counts[i, 4] = sum(map(len, found))
                counts[i, 3] = counts[i, 4] - sum(map(len, set(found)))
            if exact:
                digests[i] = digest(words)
        else:
            hashes = line_hashes(found) if by_line else (empty, empty)
            feats.parts[i] = Parts(words, *hashes, empty, empty)
    if opts.dedup != "near":
        return feats
    feats.sigs = np.full((n, NUM_PERM), 0xFFFFFFFF, np.uint32)
    wstart, wlen = np.flatnonzero(first), np.flatnonzero(last) + 1
    if len(wstart) == 0:
        feats.bands = band_keys(feats.sigs, *lsh_params(opts.near_threshold))
        return feats
    wlen -= wstart
    # word hashes: a mix of each character and its place in the word, summed over the word (tabulation-like)
    at = np.flatnonzero(word)
    woff = np.concatenate([[0], np.cumsum(wlen)[:-1]])
    pos = (at - np.repeat(wstart, wlen)).astype(np.uint64)
    W = fmix64(np.add.reduceat(fmix64(cps[at].astype(np.uint64) * CHAR_M + pos * POS_M), woff))
    pw = np.concatenate([[0], np.cumsum(counts[:, 0])])  # each piece's first word
    for i, parts in feats.parts.items():
        w = W[pw[i] : pw[i + 1]]
        parts.head, parts.tail = w[: SHINGLE - 1], w[max(0, len(w) - SHINGLE + 1) :]
    _signatures(feats.sigs, W, pw, whole)
    feats.bands = band_keys(feats.sigs, *lsh_params(opts.near_threshold))
    return feats


def lines(norm: str) -> list[str]:
    """A normalised piece's lines (cut at "\\n"), each with its whitespace runs collapsed and stripped."""
    return [" ".join(line.split()) for line in norm.split("\n")]


def line_hashes(found: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(8-byte BLAKE2b, length) of each line (from `lines`) of a piece that is not a whole document."""
    hashes = np.fromiter((digest(x) for x in found), np.uint64, len(found))
    return hashes, np.fromiter(map(len, found), np.int64, len(found))


def _signatures(sigs: np.ndarray, W, pw, whole) -> None:
    """MinHash signatures of all pieces, from the shingles inside each (and all words of a whole
    document shorter than a shingle)."""
    n = len(pw) - 1
    hashes, owner = [], []
    for i in range(n):
        k = pw[i + 1] - pw[i]
        if k >= SHINGLE or (whole[i] and k > 0):
            hashes.append(shingles(W[pw[i] : pw[i + 1]]))
            owner.append(np.full(len(hashes[-1]), i, np.int64))
    if hashes:
        s, p = np.concatenate(hashes), np.concatenate(owner)
        for a in range(0, len(s), CHUNK):
            h, q = minhash(s[a : a + CHUNK]), p[a : a + CHUNK]
            cut = np.flatnonzero(np.r_[True, q[1:] != q[:-1]])
            rows = q[cut]
            sigs[rows] = np.minimum(sigs[rows], np.minimum.reduceat(h, cut, axis=0))
