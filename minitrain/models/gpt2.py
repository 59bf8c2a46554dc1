"""GPT-2 in one file. Submodule names mirror the Hugging Face checkpoint keys
(`transformer.h.0.attn.c_attn.weight`, ...) so that importing weights is one loop with a shape
check.

References: Radford et al. 2019 (GPT-2); nanoGPT's model.py for the layout.
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
from minitrain.models.lm import chunked_cross_entropy, sample_next  # noqa: F401 (their home was here)


@dataclass
class GPT2Config:
    model_type: str = "gpt2"  # the family, as Hugging Face's config.json names it (checkpoints record it)
    vocab_size: int = 50257
    n_positions: int = 1024  # the block size: the longest context the model sees
    n_embd: int = 768
    n_layer: int = 12
    n_head: int = 12
    embd_pdrop: float = 0.0
    attn_pdrop: float = 0.0
    resid_pdrop: float = 0.0
    layer_norm_epsilon: float = 1e-5
    initializer_range: float = 0.02
    bos_token_id: int = 50256
    eos_token_id: int = 50256
    pad_vocab_to_multiple: int = 64  # padded rows make the LM-head matmul faster; results unchanged

    @property
    def padded_vocab_size(self) -> int:
        m = self.pad_vocab_to_multiple or 1
        return (self.vocab_size + m - 1) // m * m

    SHAPE = ("vocab_size", "n_positions", "n_embd", "n_layer", "n_head")
    DROPOUT = ("embd_pdrop", "attn_pdrop", "resid_pdrop")  # what --dropout sets

    def check_same_shape(self, saved, source: str) -> None:
        """A checkpoint's weights fit this model only if the shapes agree (said in one sentence)."""
        if saved.model_type != self.model_type:
            raise UserError(
                f"the checkpoint holds a {saved.model_type} model, but {source} gives a {self.model_type} one; "
                f"resume with the run's own settings."
            )
        if any(getattr(saved, k) != getattr(self, k) for k in self.SHAPE):
            raise UserError(
                f"the checkpoint holds a model of shape { ({k: getattr(saved, k) for k in self.SHAPE}) }, but "
                f"{source} gives { ({k: getattr(self, k) for k in self.SHAPE}) }; resume with the run's own settings."
            )

    @classmethod
    def from_hf(cls, d: dict, where=None) -> "GPT2Config":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def to_hf(self) -> dict:
        d = asdict(self)
        d.pop("pad_vocab_to_multiple")
        d.update(
            model_type="gpt2",
            architectures=["GPT2LMHeadModel"],
            n_ctx=self.n_positions,
            activation_function="gelu_new",
            summary_dropout=0.0,
        )
        return d


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: GPT2Config):
        super().__init__()
        assert cfg.n_embd % cfg.n_head == 0, "n_embd must be divisible by n_head"
        self.n_head, self.dropout = cfg.n_head, cfg.attn_pdrop
        self.c_attn = nn.Linear(cfg.n_embd, 3 * cfg.n_embd)  # q, k, v for all heads at once
        self.c_proj = nn.Linear(cfg.n_embd, cfg.n_embd)
        self.resid_dropout = nn.Dropout(cfg.resid_pdrop)

    def forward(self, x, past=None, mask=None):
        """`mask` (B, 1, T, T) boolean, True where a query may attend to a key: several documents in
        a row (see models/documents.py); None: plain causal attention."""
        B, T, C = x.shape
        nh, hs = self.n_head, C // self.n_head
        q, k, v = self.c_attn(x).split(C, dim=2)
        q = q.view(B, T, nh, hs).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, nh, hs).transpose(1, 2)  # (B, nh, T, hs)
        v = v.view(B, T, nh, hs).transpose(1, 2)  # (B, nh, T, hs)
        if past is not None:  # KV cache: prepend the keys and values of earlier positions
            k = torch.cat([past[0], k], dim=2)  # (B, nh, T_past + T, hs)
            v = torch.cat([past[1], v], dim=2)  # (B, nh, T_past + T, hs)
        mask, causal = lm.attention_mask(T, k.size(2), x.device, mask)  # documents in a row, or a cache
        y = lm.attention(q, k, v, mask, causal, self.dropout if self.training else 0.0)  # (B, nh, T, hs)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # re-assemble the heads side by side
        return self.resid_dropout(self.c_proj(y)), (k, v)


class MLP(nn.Module):
    def __init__(self, cfg: GPT2Config):
        super().__init__()
        self.c_fc = nn.Linear(cfg.n_embd, 4 * cfg.n_embd)
        self.c_proj = nn.Linear(4 * cfg.n_embd, cfg.n_embd)
        self.dropout = nn.Dropout(cfg.resid_pdrop)

    def forward(self, x):
        # GPT-2 uses the tanh approximation of GELU ("gelu_new" in Hugging Face's config).
        return self.dropout(self.c_proj(F.gelu(self.c_fc(x), approximate="tanh")))


class Block(nn.Module):
    """Pre-LN transformer block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, cfg: GPT2Config):
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.n_embd, eps=cfg.layer_norm_epsilon)
        self.attn = CausalSelfAttention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.n_embd, eps=cfg.layer_norm_epsilon)
        self.mlp = MLP(cfg)

    def forward(self, x, past=None, mask=None):
        a, present = self.attn(self.ln_1(x), past, mask)
        x = x + a
        x = x + self.mlp(self.ln_2(x))
        return x, present


class GPT2(nn.Module):
    config_class = GPT2Config
    # GPT-2's Conv1D layers store weights as (in, out); nn.Linear wants (out, in).
    CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
    NOT_WEIGHTS = (".attn.bias", ".attn.masked_bias")  # causal-mask buffers of older checkpoints

    def __init__(self, cfg: GPT2Config):
        super().__init__()
        self.config = cfg
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(cfg.padded_vocab_size, cfg.n_embd),
                wpe=nn.Embedding(cfg.n_positions, cfg.n_embd),
                drop=nn.Dropout(cfg.embd_pdrop),
                h=nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer)),
                ln_f=nn.LayerNorm(cfg.n_embd, eps=cfg.layer_norm_epsilon),
            )
        )
        self.lm_head = nn.Linear(cfg.n_embd, cfg.padded_vocab_size, bias=False)
        self.lm_head.weight = self.transformer.wte.weight  # weight tying, as GPT-2
        self.activation_checkpointing = False  # trade compute for memory (set by the trainer)
        # not a weight: derived from the config, so it is left out of checkpoints and exports
        self.register_buffer("pad_logit_bias", None, persistent=False)
        self.init_buffers()
        self.apply(self._init_weights)
        # GPT-2 paper: scale the residual projections by 1/sqrt(number of residual layers).
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, 0.0, cfg.initializer_range / math.sqrt(2 * cfg.n_layer))

    def _init_weights(self, m):
        lm.init_weights(m, self.config.initializer_range)

    def init_buffers(self) -> None:
        """The buffers derived from the config (none is a weight): at construction, and again once a
        model built on the meta device (sharded loading, training/fsdp.py) has real memory."""
        cfg, device = self.config, self.lm_head.weight.device
        pad = cfg.padded_vocab_size - cfg.vocab_size
        bias = torch.cat([torch.zeros(cfg.vocab_size, device=device), torch.full((pad,), float("-inf"), device=device)])
        self.pad_logit_bias = bias if pad else None

    def blocks(self) -> nn.ModuleList:
        """The transformer blocks: what regional compilation and FSDP treat one by one."""
        return self.transformer.h

    def compile_blocks(self) -> None:
        """Regional compilation (as torchtitan does): each transformer block is compiled in place,
        so the graph is compiled once and reused by every block, state_dict keys do not change,
        and data parallelism still reduces each block's gradients while backward goes on."""
        for block in self.blocks():
            block.compile()

    def num_params(self, non_embedding=True) -> int:
        """Parameters counted once (the tied head shares wte); without the position embeddings."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= self.transformer.wpe.weight.numel()
        return n

    def forward(self, input_ids, labels=None, reduction="mean", doc_ids=None):
        """input_ids (B, T); labels (B, T): the token that follows each position, -100 to skip;
        doc_ids (B, T) or None: which document each token belongs to, for rows that hold several
        (packed examples, text split at end-of-text): positions restart at each document and
        attention stays inside it (models/documents.py). None: one document per row.

        Returns (logits, loss). With `reduction="sum"` the loss is summed over target tokens, so
        that the training loop can divide by the target tokens of a whole accumulation window.
        """
        if labels is None:
            return self.decode(input_ids, doc_ids=doc_ids)[0], None
        # With targets, the (B, T, V) logits are never materialised: the loss is computed from
        # the final hidden states over chunks of rows (see chunked_cross_entropy), and no logits
        # are returned. Call the model without labels for logits.
        h = self.hidden_states(input_ids, doc_ids)  # (B, T, C)
        return None, lm.lm_loss(h, self.lm_head.weight, self.pad_logit_bias, labels, reduction)

    def hidden_states(self, input_ids, doc_ids=None):
        """The final hidden states (B, T, C), after ln_f: what the LM head multiplies."""
        return self._trunk(input_ids, None, doc_ids)[0]

    def decode(self, input_ids, past=None, padded=False, doc_ids=None):
        """Logits (B, T, vocab_size) for input_ids that follow the cached keys/values `past` (or,
        without a cache, for rows of several documents: `doc_ids`, as in forward).

        Returns the logits and the new cache: one (k, v) pair per layer, each (B, nh, T_total, hs).
        """
        x, presents = self._trunk(input_ids, past, doc_ids)
        # The padded vocabulary rows are never predicted: the bias gives them -inf logits inside
        # the matmul itself (no extra pass over the logits, forward or backward).
        logits = F.linear(x, self.lm_head.weight, self.pad_logit_bias)  # (B, T, padded_vocab)
        return (logits if padded else logits[..., : self.config.vocab_size]), presents

    def _trunk(self, input_ids, past, doc_ids=None):
        B, T = input_ids.shape
        start = 0 if past is None else past[0][0].size(2)
        if start + T > self.config.n_positions:
            raise ValueError(f"a sequence of {start + T} tokens is longer than n_positions={self.config.n_positions}")
        if doc_ids is not None and past is not None:
            raise ValueError("doc_ids and a KV cache do not go together: generation keeps one sequence per row")
        if doc_ids is None:
            pos, mask = torch.arange(start, start + T, device=input_ids.device), None  # (T,)
        else:  # several documents per row (never with a cache): one mask, built once for all layers
            pos, mask = documents.positions(doc_ids), documents.attention_mask(doc_ids)  # (B, T), (B, 1, T, T)
        x = self.transformer.drop(self.transformer.wte(input_ids) + self.transformer.wpe(pos))
        presents = []
        for i, block in enumerate(self.transformer.h):
            if self.activation_checkpointing and self.training and torch.is_grad_enabled():
                # Keep only each block's input; recompute its activations during backward.
                x, present = checkpoint(block, x, None, mask, use_reentrant=False)
            else:
                x, present = block(x, None if past is None else past[i], mask)
            presents.append(present)
        return self.transformer.ln_f(x), presents

    # ------------------------------------------------------------------------------------------
    # generation

    def generate(self, input_ids, max_new_tokens, **sampling):
        """Sample (temperature=0: greedily pick) up to max_new_tokens after input_ids (B, T), with a
        KV cache (see minitrain.models.lm.generate for the options)."""
        return lm.generate(self, input_ids, max_new_tokens, **sampling)

    # ------------------------------------------------------------------------------------------
    # Hugging Face checkpoints

    @classmethod
    def from_pretrained(cls, name_or_dir, shard=None, **overrides) -> "GPT2":
        """Load a GPT2LMHeadModel folder or hub id (`gpt2`, `gpt2-medium`, ...); with `shard`
        (FSDP), each rank copies only its shard of each weight (see lm.build)."""
        model_dir = hub.resolve_model_dir(name_or_dir)
        hf_config = hub.read_config(model_dir)
        hub.check_model_type(hf_config, model_dir, "gpt2")
        cfg = GPT2Config.from_hf({**hf_config, **overrides})
        model = lm.build(cls, cfg, shard)
        state = {}
        for k, v in hub.load_state_dict(model_dir).items():
            k = k if k.startswith(("transformer.", "lm_head.")) else "transformer." + k
            state[k] = v
        state.pop("lm_head.weight", None)  # tied to wte
        wte = state.get("transformer.wte.weight")
        if wte is not None and wte.size(0) == cfg.vocab_size:  # pad to the padded vocabulary
            pad = cfg.padded_vocab_size - cfg.vocab_size
            state["transformer.wte.weight"] = torch.cat([wte, wte.new_zeros(pad, wte.size(1))])
        own = {k: v for k, v in lora.base_state(model).items() if k != "lm_head.weight"}
        hub.load_into(own, state, model_dir, skip=cls.NOT_WEIGHTS, transposed=cls.CONV1D)
        return model

    def save_pretrained(self, out_dir, tokenizer_dir=None) -> None:
        """Write a folder that transformers' GPT2LMHeadModel.from_pretrained loads unchanged."""
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        state = {}
        for k, v in self.state_dict().items():
            if k == "lm_head.weight":
                continue  # tied: transformers re-ties it on load
            if k == "transformer.wte.weight":
                v = v[: self.config.vocab_size]
            if any(k.endswith(t) for t in self.CONV1D):
                v = v.t()
            state[k] = v.contiguous()
        hub.write_safetensors(state, out_dir / "model.safetensors", {"format": "pt"})
        hub.write_config(self.config.to_hf(), out_dir)
        hub.copy_tokenizer_files(tokenizer_dir, out_dir)
