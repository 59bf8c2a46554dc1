"""Evaluation metrics, the FLOP count for MFU, and a stopwatch for training throughput."""

import contextlib
import math
import time


def perplexity(mean_loss: float) -> float:
    return math.exp(min(mean_loss, 700.0))  # exp overflows past ~709


def evaluations_without_improvement(scores: list[float], min_delta: float) -> int:
    """How many evaluations have passed since the last one that beat the best score so far by
    more than `min_delta` (higher scores are better: pass -loss for a loss). The best moves only on
    such an improvement, as in Keras' and Lightning's EarlyStopping."""
    best, stale = -math.inf, 0
    for score in scores:
        if score > best + min_delta:
            best, stale = score, 0
        else:
            stale += 1
    return stale


def stopped_early(scores: list[float], patience: int, min_delta: float) -> bool:
    """--patience: whether `patience` (> 0) evaluations have passed without an improvement larger
    than `min_delta` (higher scores are better)."""
    return patience > 0 and evaluations_without_improvement(scores, min_delta) >= patience


def bits_per_byte(mean_loss: float, n_tokens: int, n_bytes: int) -> float:
    """A mean next-token loss (nats per token) as bits per byte of the text predicted: the total
    nats / ln 2 over the UTF-8 bytes those tokens stand for. Independent of the tokenizer."""
    return mean_loss * n_tokens / math.log(2) / max(1, n_bytes)


def flops_per_token(n_params: int, n_layer: int, n_embd: int, seq_len: int) -> float:
    """Training FLOPs per token: 6N for the matmuls (forward 2N, backward 4N) plus attention's
    6 * 2 * n_layer * seq_len * n_embd (PaLM, Chowdhery et al. 2022, appendix B).

    `n_params` counts the non-embedding parameters plus the LM-head matmul (the tied wte counted
    once, since that matmul is real work even though the weight is shared).
    """
    return 6 * n_params + 12 * n_layer * n_embd * seq_len


def throughput(tokens: int, seconds: float, flops_token: float, world_size: int, peak: float | None) -> dict:
    """tokens_per_sec (over all ranks) and, with a known peak, MFU per GPU: model FLOPs per second
    over the device's peak (the PaLM definition). Empty when no step was timed."""
    if not tokens:
        return {}
    row = {"tokens_per_sec": tokens / seconds}
    if peak:
        row["mfu"] = flops_token * row["tokens_per_sec"] / world_size / (peak * 1e12)
    return row


# Dense bf16 peak TFLOP/s without sparsity, from the vendors' data sheets.
PEAK_BF16_TFLOPS = {
    "H100 SXM": 989.0,
    "H100 80GB HBM3": 989.0,
    "H100 NVL": 835.0,
    "H100 PCIe": 756.0,
    "H200": 989.0,
    "GH200": 989.0,
    "B200": 2250.0,
    "A100": 312.0,
    "L40S": 362.0,
    "A10G": 70.0,
    "L4": 121.0,
    "RTX 4090": 165.0,
    "RTX 3090": 71.0,
}


def peak_tflops(device_name: str) -> float | None:
    """The table's entry for a GPU name, longest match first; None when the GPU is not listed."""
    for key in sorted(PEAK_BF16_TFLOPS, key=len, reverse=True):
        if key.lower() in device_name.lower():
            return PEAK_BF16_TFLOPS[key]
    if "h100" in device_name.lower():  # unnamed H100 variants: the SXM figure is the usual one
        return PEAK_BF16_TFLOPS["H100 SXM"]
    return None


def classification_metrics(cm) -> dict:
    """Accuracy, F1 of class 1 (the positive class of binary tasks like MRPC) and macro-F1."""
    cm = cm.double()
    total = cm.sum().item()
    correct = cm.diag().sum().item()
    f1s = []
    for c in range(cm.size(0)):
        tp = cm[c, c].item()
        fp = cm[:, c].sum().item() - tp
        fn = cm[c, :].sum().item() - tp
        f1s.append(0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn))
    return {
        "accuracy": correct / max(1.0, total),
        "f1": f1s[1] if len(f1s) > 1 else f1s[0],
        "macro_f1": sum(f1s) / len(f1s),
    }


class Stopwatch:
    """Seconds spent training: `lap()` returns the time since the previous lap, leaving out what
    ran inside `with watch.paused():` (evaluation, checkpoints), so tokens/s measures training
    steps only."""

    def __init__(self):
        self.start, self.excluded = time.perf_counter(), 0.0

    @contextlib.contextmanager
    def paused(self):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.excluded += time.perf_counter() - t0

    def lap(self) -> float:
        now = time.perf_counter()
        seconds = now - self.start - self.excluded
        self.start, self.excluded = now, 0.0
        return seconds
