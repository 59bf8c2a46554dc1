"""Llama, Qwen2 and Qwen3 (SmolLM2 is a Llama) in one file: Hugging Face `model_type` llama, qwen2,
qwen3. Submodule names mirror the checkpoint keys (`model.layers.0.self_attn.q_proj.weight`, ...),
so importing weights is one loop with a shape check, as for GPT-2.

What differs from GPT-2, each written out once below:
- RMSNorm instead of LayerNorm (no mean, no bias; Zhang & Sennrich 2019);
- rotary position embeddings on queries and keys instead of a learned position table (Su et al.
  2021), in Hugging Face's split-half layout (`rotate_half`), with Llama 3.1's frequency scaling;
- grouped-query attention: fewer key/value heads than query heads (Ainslie et al. 2023);
- a SwiGLU MLP: down(silu(gate(x)) * up(x)) (Shazeer 2020);
- the families' options: q/k/v biases (Qwen2 always), per-head q/k RMSNorm (Qwen3), a head size
  that is not hidden / heads (Qwen3), tied or untied input and output embeddings.

References: Touvron et al. 2023 (Llama), Meta's llama-models repository (the llama3 RoPE rule),
transformers' modeling_llama.py / modeling_qwen2.py / modeling_qwen3.py (the key names and layout).
"""

import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from minitrain import UserError
from minitrain.models import documents, hub, lm, lora

ARCHITECTURES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM"}
ROPE_TYPES = ("default", "llama3")  # the rope_scaling rules implemented here
MOE_KEYS = ("num_experts", "num_local_experts", "n_routed_experts", "moe_intermediate_size")


@dataclass
class LlamaConfig:
    """The fields of Hugging Face's config.json (LlamaConfig, Qwen2Config, Qwen3Config) this model uses."""

    model_type: str = "llama"  # llama (also SmolLM2), qwen2 or qwen3
    vocab_size: int = 32000
    hidden_size: int = 576
    intermediate_size: int = 1536  # the SwiGLU MLP's inner width
    num_hidden_layers: int = 30
    num_attention_heads: int = 9
    num_key_value_heads: int = 3  # < num_attention_heads: grouped-query attention
    head_dim: int = 0  # 0: hidden_size // num_attention_heads (Qwen3 sets its own)
    max_position_embeddings: int = 2048
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_scaling: dict | None = None  # {"rope_type": "llama3", "factor": ..., ...} or None
    attention_bias: bool = False  # biases on q/k/v/o (Llama, Qwen3); Qwen2 has q/k/v biases always
    mlp_bias: bool = False
    attention_dropout: float = 0.0
    tie_word_embeddings: bool = True
    initializer_range: float = 0.02
    bos_token_id: int | None = None
    eos_token_id: int | list | None = None

    def __post_init__(self):
        self.head_dim = self.head_dim or self.hidden_size // self.num_attention_heads

    # the names the training loop reads, the same as GPT2Config's
    n_layer = property(lambda self: self.num_hidden_layers)
    n_embd = property(lambda self: self.hidden_size)
    n_head = property(lambda self: self.num_attention_heads)
    n_positions = property(lambda self: self.max_position_embeddings)

    @property
    def qkv_bias(self) -> bool:
        return self.attention_bias or self.model_type == "qwen2"

    @property
    def qk_norm(self) -> bool:
        return self.model_type == "qwen3"

    SHAPE = (
        "model_type",
        "vocab_size",
        "hidden_size",
        "intermediate_size",
        "num_hidden_layers",
        "num_attention_heads",
        "num_key_value_heads",
        "head_dim",
        "attention_bias",
        "mlp_bias",
        "tie_word_embeddings",
    )
    DROPOUT = ("attention_dropout",)  # what --dropout sets (Hugging Face's Llama has no other dropout)

    def check_same_shape(self, saved, source: str) -> None:
        """A checkpoint's weights fit this model only if the shapes agree (said in one sentence)."""
        if any(getattr(saved, k, None) != getattr(self, k) for k in self.SHAPE):
            shape = {k: getattr(saved, k, None) for k in self.SHAPE}
            raise UserError(
                f"the checkpoint holds a model of shape {shape}, but {source} gives "
                f"{ ({k: getattr(self, k) for k in self.SHAPE}) }; resume with the run's own settings."
            )

    @classmethod
    def from_hf(cls, d: dict, where="the config") -> "LlamaConfig":
        """A config.json as hub checkpoints have it (rope_theta and rope_scaling at the top level)
        or as transformers 5 writes it (both inside rope_parameters); what this model does not
        implement is refused in one sentence."""
        kind = d.get("model_type")
        moe = any(d.get(k) for k in MOE_KEYS) or "moe" in str(kind) or kind == "mixtral"
        if moe:
            raise UserError(f"{where} is a mixture-of-experts model ({kind}), which minitrain does not implement.")
        if kind not in ARCHITECTURES:
            raise UserError(f"{where} holds a {kind!r} model; this model reads {', '.join(ARCHITECTURES)}.")
        layer_types = d.get("layer_types") or []
        if d.get("use_sliding_window") or any(t != "full_attention" for t in layer_types):
            raise UserError(f"{where} uses sliding-window attention, which minitrain does not implement.")
        if d.get("hidden_act", "silu") != "silu":
            raise UserError(f"{where} has hidden_act={d['hidden_act']!r}; this model implements silu (SwiGLU).")
        rope = dict(d.get("rope_parameters") or {})  # transformers 5
        theta = d.get("rope_theta", rope.pop("rope_theta", None))
        scaling = d.get("rope_scaling") or rope or None
        if scaling is not None:
            scaling = dict(scaling)
            rope_type = scaling.pop("rope_type", scaling.pop("type", "default"))
            if rope_type not in ROPE_TYPES:
                raise UserError(
                    f"{where} has rope_scaling of type {rope_type!r}; minitrain implements {' and '.join(ROPE_TYPES)}."
                )
            if float(scaling.get("partial_rotary_factor", 1.0)) != 1.0:
                raise UserError(f"{where} rotates part of each head (partial_rotary_factor), which minitrain does not.")
            scaling = {"rope_type": rope_type, **scaling} if rope_type != "default" else None
        names = {f.name for f in fields(cls)}
        kw = {k: v for k, v in d.items() if k in names and k not in ("rope_theta", "rope_scaling")}
        kw["head_dim"] = kw.get("head_dim") or 0
        return cls(**kw, rope_theta=float(theta or 10000.0), rope_scaling=scaling)

    def to_hf(self) -> dict:
        """config.json as the hub checkpoints have it (read by transformers 4.45+ and 5)."""
        d = asdict(self)
        if self.model_type == "qwen2":  # Qwen2Config has neither: its q/k/v biases are always there
            d.pop("attention_bias")
            d.pop("mlp_bias")
        d.update(architectures=[ARCHITECTURES[self.model_type]], hidden_act="silu", use_cache=True)
        return d


# ----------------------------------------------------------------------------------------------
# the pieces


class RMSNorm(nn.Module):
    """x / sqrt(mean(x^2) + eps) * weight: LayerNorm without the mean and the bias. Computed in
    fp32 (as Hugging Face does), then cast back: bf16's mean of squares is too coarse."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(x.dtype)


def rope_frequencies(cfg: LlamaConfig) -> torch.Tensor:
    """The rotation speed of each pair of dimensions: theta^(-2i/d) for i < d/2 (RoFormer, eq. 15).

    With rope_scaling llama3 (Llama 3.1 and 3.2; Meta's `apply_scaling`), long wavelengths (more than
    original_max_position_embeddings / low_freq_factor tokens) are slowed down by `factor`, short
    ones (less than .../high_freq_factor) kept, and those between interpolated smoothly, so the
    model reads contexts `factor` times longer than it was pre-trained on without retraining its
    local attention patterns."""
    d = cfg.head_dim
    inv_freq = 1.0 / (cfg.rope_theta ** (torch.arange(0, d, 2, dtype=torch.int64).float() / d))
    s = cfg.rope_scaling
    if s is None:
        return inv_freq
    factor, low, high = s["factor"], s["low_freq_factor"], s["high_freq_factor"]
    old_len = s["original_max_position_embeddings"]
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > old_len / low, inv_freq / factor, inv_freq)
    smooth = (old_len / wavelen - low) / (high - low)  # 0 at the low-frequency end, 1 at the high one
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = (wavelen >= old_len / high) & (wavelen <= old_len / low)
    return torch.where(medium, smoothed, scaled)


def rotate_half(x):
    """(x1, x2) -> (-x2, x1) on the two halves of the last dimension: Hugging Face's layout pairs
    dimension i with i + d/2 (Meta's original pairs 2i with 2i+1; the checkpoints' q/k weights are
    permuted to match, which is why the split-half form is the one to use with them)."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x, cos, sin):
    """Rotate each pair of dimensions of x (B, nh, T, hs) by its position's angle."""
    return x * cos + rotate_half(x) * sin


class Attention(nn.Module):
    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        if cfg.num_attention_heads % cfg.num_key_value_heads:
            raise UserError(
                f"num_attention_heads={cfg.num_attention_heads} is not a multiple of "
                f"num_key_value_heads={cfg.num_key_value_heads}."
            )
        self.n_head, self.n_kv_head, self.head_dim = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        self.dropout = cfg.attention_dropout
        C, hs, bias = cfg.hidden_size, cfg.head_dim, cfg.qkv_bias
        self.q_proj = nn.Linear(C, self.n_head * hs, bias=bias)
        self.k_proj = nn.Linear(C, self.n_kv_head * hs, bias=bias)
        self.v_proj = nn.Linear(C, self.n_kv_head * hs, bias=bias)
        self.o_proj = nn.Linear(self.n_head * hs, C, bias=cfg.attention_bias)
        if cfg.qk_norm:  # Qwen3: each head's query and key RMS-normalised before the rotation
            self.q_norm = RMSNorm(hs, cfg.rms_norm_eps)
            self.k_norm = RMSNorm(hs, cfg.rms_norm_eps)
        self.qk_norm = cfg.qk_norm

    def forward(self, x, cos, sin, past=None, mask=None):
        B, T, C = x.shape
        nh, nkv, hs = self.n_head, self.n_kv_head, self.head_dim
        q = self.q_proj(x).view(B, T, nh, hs)  # (B, T, nh, hs)
        k = self.k_proj(x).view(B, T, nkv, hs)  # (B, T, nkv, hs)
        v = self.v_proj(x).view(B, T, nkv, hs).transpose(1, 2)  # (B, nkv, T, hs)
        if self.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        q = apply_rope(q.transpose(1, 2), cos, sin)  # (B, nh, T, hs)
        k = apply_rope(k.transpose(1, 2), cos, sin)  # (B, nkv, T, hs)
        if past is not None:  # KV cache: the (already rotated) keys and values of earlier positions
            k = torch.cat([past[0], k], dim=2)  # (B, nkv, T_past + T, hs)
            v = torch.cat([past[1], v], dim=2)  # (B, nkv, T_past + T, hs)
        mask, causal = lm.attention_mask(T, k.size(2), x.device, mask)  # documents in a row, or a cache
        # Grouped-query attention: query head i reads key/value head i // (nh / nkv). enable_gqa
        # lets the kernel do that without copying k and v nh / nkv times (the cache stays small too).
        dropout = self.dropout if self.training else 0.0
        y = lm.attention(q, k, v, mask, causal, dropout, enable_gqa=nkv != nh)  # (B, nh, T, hs)
        y = y.transpose(1, 2).reshape(B, T, nh * hs)  # the heads side by side again
        return self.o_proj(y), (k, v)


class MLP(nn.Module):
    """SwiGLU: the gate's SiLU multiplies the up projection elementwise, then down."""

    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        C, H = cfg.hidden_size, cfg.intermediate_size
        self.gate_proj = nn.Linear(C, H, bias=cfg.mlp_bias)
        self.up_proj = nn.Linear(C, H, bias=cfg.mlp_bias)
        self.down_proj = nn.Linear(H, C, bias=cfg.mlp_bias)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    """Pre-norm block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x, cos, sin, past=None, mask=None):
        a, present = self.self_attn(self.input_layernorm(x), cos, sin, past, mask)
        x = x + a
        x = x + self.mlp(self.post_attention_layernorm(x))
        return x, present


# ----------------------------------------------------------------------------------------------
# the model


class Llama(nn.Module):
    config_class = LlamaConfig
    NOT_WEIGHTS = ("rotary_emb.inv_freq",)  # a buffer that older checkpoints saved

    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.config = cfg
        self.model = nn.ModuleDict(
            dict(
                embed_tokens=nn.Embedding(cfg.vocab_size, cfg.hidden_size),
                layers=nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.num_hidden_layers)),
                norm=RMSNorm(cfg.hidden_size, cfg.rms_norm_eps),
            )
        )
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        if cfg.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        self.activation_checkpointing = False  # trade compute for memory (set by the trainer)
        # derived from the config, so left out of checkpoints and exports
        self.register_buffer("inv_freq", None, persistent=False)
        self.init_buffers()
        self.apply(self._init_weights)

    def _init_weights(self, m):
        # Hugging Face's initialisation: normal(0, initializer_range), zero biases, norms at one
        lm.init_weights(m, self.config.initializer_range)

    def init_buffers(self) -> None:
        """The rotation speeds, derived from the config (see GPT2.init_buffers)."""
        self.inv_freq = rope_frequencies(self.config).to(self.lm_head.weight.device)

    def blocks(self) -> nn.ModuleList:
        """The decoder layers: what regional compilation and FSDP treat one by one."""
        return self.model.layers

    def compile_blocks(self) -> None:
        """Each decoder layer compiled in place (see GPT2.compile_blocks)."""
        for layer in self.blocks():
            layer.compile()

    def num_params(self, non_embedding=True) -> int:
        """Parameters counted once (a tied head shares embed_tokens). non_embedding: without an
        untied input embedding, a table lookup that costs no FLOPs (the LM head is a matmul)."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding and not self.config.tie_word_embeddings:
            n -= self.model.embed_tokens.weight.numel()
        return n

    def forward(self, input_ids, labels=None, reduction="mean", doc_ids=None):
        """input_ids (B, T); labels (B, T): the token that follows each position, -100 to skip;
        doc_ids (B, T) or None: which document each token belongs to, for rows that hold several
        (packed examples, --doc_mask): rotary positions restart at each document and attention
        stays inside it (minitrain.models.documents), as in GPT2.forward.

        Returns (logits, loss), as GPT2.forward: with labels the loss (mean, or "sum" over target
        tokens) is computed over chunks of rows and no logits are returned."""
        if labels is None:
            return self.decode(input_ids, doc_ids=doc_ids)[0], None
        h = self.hidden_states(input_ids, doc_ids)  # (B, T, C)
        return None, lm.lm_loss(h, self.lm_head.weight, None, labels, reduction)

    def hidden_states(self, input_ids, doc_ids=None):
        """The final hidden states (B, T, C), after the last norm: what the LM head multiplies."""
        return self._trunk(input_ids, None, doc_ids)[0]

    def decode(self, input_ids, past=None, padded=False, doc_ids=None):
        """Logits (B, T, vocab_size) for input_ids that follow the cached keys/values `past` (one
        (k, v) pair per layer, each (B, nkv, T_past, hs)); returns the logits and the new cache.
        `padded` is GPT-2's (its padded vocabulary); this vocabulary is never padded."""
        x, presents = self._trunk(input_ids, past, doc_ids)
        return self.lm_head(x), presents  # (B, T, vocab_size)

    def _trunk(self, input_ids, past, doc_ids=None):
        B, T = input_ids.shape
        start = 0 if past is None else past[0][0].size(2)
        if start + T > self.config.n_positions:
            raise ValueError(f"a sequence of {start + T} tokens is longer than n_positions={self.config.n_positions}")
        if doc_ids is not None and past is not None:
            raise ValueError("doc_ids (several documents in a row) is for training; generation never packs")
        x = self.model.embed_tokens(input_ids)  # (B, T, C)
        # the rotation angles of each token's position, computed in fp32 (positions reach 10^5):
        # start..start+T-1, or counted from each document's start when a row holds several
        if doc_ids is None:
            pos, mask = torch.arange(start, start + T, device=input_ids.device, dtype=torch.float32), None
        else:
            pos, mask = documents.positions(doc_ids).float(), documents.attention_mask(doc_ids)  # (B, T), (B, 1, T, T)
        angles = pos[..., None] * self.inv_freq  # (T, hs / 2) or (B, T, hs / 2)
        angles = torch.cat((angles, angles), dim=-1)  # dimension i and i + hs/2 share an angle
        cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
        if doc_ids is not None:  # (B, 1, T, hs): broadcast over the heads
            cos, sin = cos[:, None], sin[:, None]
        presents = []
        for i, layer in enumerate(self.model.layers):
            if self.activation_checkpointing and self.training and torch.is_grad_enabled():
                # Keep only each layer's input; recompute its activations during backward.
                x, present = checkpoint(layer, x, cos, sin, None, mask, use_reentrant=False)
            else:
                x, present = layer(x, cos, sin, None if past is None else past[i], mask)
            presents.append(present)
        return self.model.norm(x), presents

    def generate(self, input_ids, max_new_tokens, **sampling):
        """Sample (temperature=0: greedily pick) up to max_new_tokens after input_ids (B, T), with a
        KV cache (see minitrain.models.lm.generate for the options)."""
        return lm.generate(self, input_ids, max_new_tokens, **sampling)

    # ------------------------------------------------------------------------------------------
    # Hugging Face checkpoints

    @classmethod
    def from_pretrained(cls, name_or_dir, shard=None, **overrides) -> "Llama":
        """Load a LlamaForCausalLM / Qwen2ForCausalLM / Qwen3ForCausalLM folder or hub id; its
        weights may be sharded (model.safetensors.index.json) and in any float dtype (kept fp32).
        With `shard` (FSDP), each rank copies only its shard of each weight (see lm.build)."""
        model_dir = hub.resolve_model_dir(name_or_dir)
        cfg = LlamaConfig.from_hf({**hub.read_config(model_dir), **overrides}, model_dir)
        model = lm.build(cls, cfg, shard)
        state = hub.load_state_dict(model_dir)
        own = lora.base_state(model)
        if cfg.tie_word_embeddings:  # one tensor: loaded as embed_tokens (a tied checkpoint may omit it)
            state.pop("lm_head.weight", None)
            own.pop("lm_head.weight")
        hub.load_into(own, state, model_dir, skip=cls.NOT_WEIGHTS)
        return model

    def save_pretrained(self, out_dir, tokenizer_dir=None, max_shard_bytes=hub.MAX_SHARD_BYTES) -> None:
        """Write a folder that transformers' AutoModelForCausalLM.from_pretrained loads unchanged
        (sharded with an index when the weights exceed max_shard_bytes)."""
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        state = {k: v.contiguous() for k, v in self.state_dict().items()}
        if self.config.tie_word_embeddings:
            state.pop("lm_head.weight")  # tied: transformers re-ties it on load
        hub.write_weights(state, out_dir, max_shard_bytes)
        hub.write_config(self.config.to_hf(), out_dir)
        hub.copy_tokenizer_files(tokenizer_dir, out_dir)
