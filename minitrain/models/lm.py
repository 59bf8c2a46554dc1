"""What every causal language model here shares: the loss without the logits, and sampling with a
KV cache. A model provides `decode(input_ids, past) -> (logits, new past)` and `config.n_positions`."""

import torch
import torch.nn as nn
import torch.nn.functional as F


def build(cls, cfg, shard=None) -> nn.Module:
    """`cls(cfg)`; with `shard` (FSDP's, training/fsdp.py: shards a model in place and gives each
    rank memory for its shards), the model is built on the meta device first (shapes, no memory,
    no random numbers), sharded, and its derived buffers computed: no rank ever holds a full copy,
    and the caller copies each rank's slices of the checkpoint in (hub.copy_into)."""
    if shard is None:
        return cls(cfg)
    with torch.device("meta"):
        model = cls(cfg)
    shard(model)
    model.init_buffers()
    return model


@torch.no_grad()
def generate(
    model,
    input_ids,
    max_new_tokens,
    temperature=1.0,
    top_k=None,
    top_p=None,
    eos_token_id=None,
    generator=None,
    use_cache=True,
):
    """Sample (with temperature=0: greedily pick) up to max_new_tokens after input_ids (B, T).

    With the KV cache each step feeds only the newest token. Without it every step recomputes
    the whole (cropped) prefix: slower, and the reference the cache is tested against. Rows that
    produced eos_token_id are padded with it; generation stops when every row has.
    """
    was_training = model.training
    model.eval()
    n_pos = model.config.n_positions
    ids, past = input_ids, None
    done = torch.zeros(ids.size(0), dtype=torch.bool, device=ids.device)
    for _ in range(max_new_tokens):
        if past is None:  # first step, no cache, or a full cache: run the last n_pos tokens
            logits, past = model.decode(ids[:, -n_pos:])
        else:
            logits, past = model.decode(ids[:, -1:], past)
        if not use_cache or past[0][0].size(2) >= n_pos:
            past = None
        next_id = sample_next(logits[:, -1, :], temperature, top_k, top_p, generator)
        if eos_token_id is not None:
            next_id = next_id.masked_fill(done, eos_token_id)
            done |= next_id == eos_token_id
        ids = torch.cat([ids, next_id[:, None]], dim=1)
        if eos_token_id is not None and bool(done.all()):
            break
    model.train(was_training)
    return ids


def attention_mask(T: int, T_k: int, device, documents_mask=None):
    """(mask, is_causal) for scaled_dot_product_attention of T new queries against T_k keys, the
    last T of which are the new tokens' own; a `documents_mask` (several documents in a row, see
    models/documents.py) is causal inside each document already."""
    if documents_mask is not None:
        return documents_mask, False
    if T == T_k:  # no cache, or an empty one: plain causal attention (flash kernels on GPU)
        return None, True
    if T == 1:  # one new token attends to everything before it
        return None, False
    # several new tokens after a cache: token i sees the cache and new tokens <= i
    return torch.ones(T, T_k, dtype=torch.bool, device=device).tril(T_k - T), False


def attention(q, k, v, mask, is_causal: bool, dropout_p: float = 0.0, enable_gqa: bool = False):
    """scaled_dot_product_attention(q, k, v), in fp32 under CPU autocast: PyTorch's CPU attention
    kernel runs 2-3x slower in bf16 than in fp32 (its backward above all; measured on the main
    job's shape, NOTES.md), so there q, k and v go in as fp32 (a more exact softmax too) and the
    output comes back in the autocast dtype, as autocast would return it. Elsewhere: the plain call."""
    kw = dict(attn_mask=mask, is_causal=is_causal, dropout_p=dropout_p, enable_gqa=enable_gqa)
    if q.device.type != "cpu" or not torch.is_autocast_enabled("cpu"):
        return F.scaled_dot_product_attention(q, k, v, **kw)
    with torch.autocast("cpu", enabled=False):  # autocast would cast them to bf16
        y = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), **kw)
    return y.to(torch.get_autocast_dtype("cpu"))


def init_weights(m: nn.Module, std: float) -> None:
    """Hugging Face's initialisation of a causal LM's layers: normal(0, std) weights, zero biases
    (norms keep their ones)."""
    if isinstance(m, (nn.Linear, nn.Embedding)):
        nn.init.normal_(m.weight, 0.0, std)
    if isinstance(m, nn.Linear) and m.bias is not None:
        nn.init.zeros_(m.bias)


def lm_loss(h, weight, bias, labels, reduction: str):
    """The loss of final hidden states h (B, T, C) against labels (B, T), -100 skipped, without the
    logits (chunked_cross_entropy): summed over target tokens, or their mean (reduction "mean")."""
    loss = chunked_cross_entropy(h.flatten(0, 1), weight, bias, labels.flatten())
    return loss / (labels != -100).sum().clamp(min=1) if reduction == "mean" else loss


def chunked_cross_entropy(h, weight, bias, targets, chunk_elements: int = 2**26, block_elements: int = 2**19):
    """sum over rows of cross_entropy(h @ weight.T + bias, targets), -100 skipped, without the (N, V)
    logits: rows go `chunk_elements // V` at a time, the matmul in the autocast dtype, log-softmax
    in fp32. For GPT-2 124M that is ~1,300 rows (~0.5 GB of fp32 logits at a time) instead of
    16 x 1024 rows (~6.6 GB with its fp32 copy and log-probs). With autograd, the gradients are
    computed in the same pass (softmax minus one-hot), so no chunk is kept for backward: the idea
    of Liger-Kernel's fused linear cross-entropy, in plain PyTorch.

    On a CPU the fp32 passes over a chunk's logits go `block_elements // V` rows at a time: a few
    MB that stay in cache and reuse the same memory, where a whole chunk's fp32 copy (200 MB for
    GPT-2's vocabulary) page-faults on every allocation (NOTES.md). On a GPU, one block a chunk."""
    rows = max(1, chunk_elements // weight.size(0))
    block = max(1, block_elements // weight.size(0)) if h.device.type == "cpu" else rows
    if torch.is_grad_enabled() and (h.requires_grad or weight.requires_grad):
        return _ChunkedCrossEntropy.apply(h, weight, bias, targets, rows, block)
    loss = torch.zeros((), dtype=torch.float32, device=h.device)
    for s in range(0, h.size(0), rows):
        logits = F.linear(h[s : s + rows], weight, bias).float()
        loss = loss + F.cross_entropy(logits, targets[s : s + rows], ignore_index=-100, reduction="sum")
    return loss


class _ChunkedCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h, weight, bias, targets, rows, block):
        loss = torch.zeros((), dtype=torch.float32, device=h.device)
        grad_h, grad_w = torch.empty_like(h), None
        w = weight.to(h.dtype)  # cast once (bf16 autocast), not once per chunk and per matmul
        for s in range(0, h.size(0), rows):
            hc, t = h[s : s + rows], targets[s : s + rows]
            valid = (t != -100)[:, None]  # (n, 1): rows with a target
            t = t.clamp(min=0)[:, None]  # (n, 1)
            logits = F.linear(hc, w, bias)  # (n, V), overwritten below by its own gradient
            for i in range(0, hc.size(0), block):
                ti = t[i : i + block]
                # two passes: one fused log-softmax (in fp32), then exp in place, which is the softmax
                logp = F.log_softmax(logits[i : i + block], dim=-1, dtype=torch.float32)
                loss -= (logp.gather(1, ti) * valid[i : i + block]).sum()
                # d(sum of losses) / d logits = softmax - one-hot, stored back in the logits' dtype
                logits[i : i + block] = logp.exp_().scatter_add_(1, ti, torch.full(ti.shape, -1.0, device=ti.device))
            # logits now holds their gradient; the rows without a target are zeroed on the narrow
            # (n, C) side of the matmuls
            grad_h[s : s + rows] = (logits @ w) * valid
            g_w = (logits.t() @ (hc * valid)).float()  # (V, C)
            grad_w = g_w if grad_w is None else grad_w.add_(g_w)
        ctx.save_for_backward(grad_h, grad_w)
        ctx.weight_dtype = weight.dtype
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        grad_h, grad_w = ctx.saved_tensors
        # scaled in place: no second (V, C) copy of the head's gradient (a second backward through
        # this graph fails loudly, as autograd sees the saved tensors modified)
        grad_h, grad_w = grad_h.mul_(grad_loss.to(grad_h.dtype)), grad_w.mul_(grad_loss)
        return grad_h, grad_w.to(ctx.weight_dtype), None, None, None, None


def sample_next(logits, temperature=1.0, top_k=None, top_p=None, generator=None):
    """Pick the next token id for each row of logits (B, V)."""
    if not temperature or temperature <= 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if top_k:
        kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        # Drop a token once the tokens before it already cover top_p (the first is always kept).
        drop_sorted = (cum - sorted_logits.softmax(-1)) >= top_p
        drop = drop_sorted.scatter(1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    probs = logits.softmax(-1)
    return torch.multinomial(probs, 1, generator=generator)[:, 0]
