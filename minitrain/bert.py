"""BERT encoder and sentence-pair classifier. Submodule names mirror the Hugging Face checkpoint
keys
(`bert.encoder.layer.0.attention.self.query.weight`, ...) so import is one loop with shape checks.

Reference: Devlin et al. 2018 (BERT): post-LN encoder, [CLS] pooler with tanh.
"""

from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from minitrain import UserError, hub

ACTIVATIONS = {
    "gelu": F.gelu,
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
    "silu": F.silu,
    "swish": F.silu,
}


@dataclass
class BertConfig:
    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    initializer_range: float = 0.02
    pad_token_id: int = 0
    classifier_dropout: float | None = None
    num_labels: int = 2

    @classmethod
    def from_hf(cls, d: dict) -> "BertConfig":
        names = {f.name for f in fields(cls)}
        d = dict(d)
        if "id2label" in d and "num_labels" not in d:
            d["num_labels"] = len(d["id2label"])
        if d.get("hidden_act") not in ACTIVATIONS:
            raise UserError(
                f"hidden_act {d.get('hidden_act')!r} is not supported by minitrain's BERT."
            )
        return cls(**{k: v for k, v in d.items() if k in names})

    def to_hf(self) -> dict:
        d = asdict(self)
        n = d.pop("num_labels")
        d.update(
            model_type="bert",
            architectures=["BertForSequenceClassification"],
            position_embedding_type="absolute",
            id2label={str(i): f"LABEL_{i}" for i in range(n)},
            label2id={f"LABEL_{i}": i for i in range(n)},
        )
        return d


class BertEmbeddings(nn.Module):
    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(
            cfg.vocab_size, cfg.hidden_size, padding_idx=cfg.pad_token_id
        )
        self.position_embeddings = nn.Embedding(cfg.max_position_embeddings, cfg.hidden_size)
        self.token_type_embeddings = nn.Embedding(cfg.type_vocab_size, cfg.hidden_size)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.hidden_dropout_prob)

    def forward(self, input_ids, token_type_ids):
        T = input_ids.size(1)
        pos = torch.arange(T, device=input_ids.device)  # (T,)
        x = (
            self.word_embeddings(input_ids)
            + self.position_embeddings(pos)
            + self.token_type_embeddings(token_type_ids)
        )
        return self.dropout(self.LayerNorm(x))


class BertSelfAttention(nn.Module):
    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.n_head, self.dropout = cfg.num_attention_heads, cfg.attention_probs_dropout_prob
        self.query = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.key = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.value = nn.Linear(cfg.hidden_size, cfg.hidden_size)

    def forward(self, x, mask):
        B, T, C = x.shape
        nh, hs = self.n_head, C // self.n_head
        q = self.query(x).view(B, T, nh, hs).transpose(1, 2)  # (B, nh, T, hs)
        k = self.key(x).view(B, T, nh, hs).transpose(1, 2)  # (B, nh, T, hs)
        v = self.value(x).view(B, T, nh, hs).transpose(1, 2)  # (B, nh, T, hs)
        # mask (B, 1, 1, T): 0 where a key is a real token, -inf-like for padding, never attended.
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0
        )
        return y.transpose(1, 2).reshape(B, T, C)  # (B, T, C)


class BertSelfOutput(nn.Module):
    """dense -> dropout -> LayerNorm(x + residual): BERT normalises after the residual (post-LN)."""

    def __init__(self, cfg: BertConfig, d_in: int):
        super().__init__()
        self.dense = nn.Linear(d_in, cfg.hidden_size)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.hidden_dropout_prob)

    def forward(self, h, residual):
        return self.LayerNorm(self.dropout(self.dense(h)) + residual)


class BertAttention(nn.Module):
    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.self = BertSelfAttention(cfg)
        self.output = BertSelfOutput(cfg, cfg.hidden_size)

    def forward(self, x, mask):
        return self.output(self.self(x, mask), x)


class BertIntermediate(nn.Module):
    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.intermediate_size)
        self.act = ACTIVATIONS[cfg.hidden_act]

    def forward(self, x):
        return self.act(self.dense(x))


class BertLayer(nn.Module):
    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.attention = BertAttention(cfg)
        self.intermediate = BertIntermediate(cfg)
        self.output = BertSelfOutput(cfg, cfg.intermediate_size)

    def forward(self, x, mask):
        x = self.attention(x, mask)
        return self.output(self.intermediate(x), x)


class BertEncoder(nn.Module):
    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.layer = nn.ModuleList(BertLayer(cfg) for _ in range(cfg.num_hidden_layers))

    def forward(self, x, mask):
        for layer in self.layer:
            x = layer(x, mask)
        return x


class BertPooler(nn.Module):
    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.hidden_size)

    def forward(self, x):
        return torch.tanh(self.dense(x[:, 0]))  # the [CLS] position summarises the pair


def _init_bert_weights(module, std):
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, 0.0, std)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)
        if isinstance(m, nn.Embedding) and m.padding_idx is not None:
            nn.init.zeros_(m.weight[m.padding_idx])
        if isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def _hf_state(model_dir, drop_prefix=None):
    """A BERT checkpoint's tensors with old LayerNorm names (gamma/beta) renamed."""
    state = {}
    for k, v in hub.load_state_dict(model_dir).items():
        k = k.replace("LayerNorm.gamma", "LayerNorm.weight").replace(
            "LayerNorm.beta", "LayerNorm.bias"
        )
        if drop_prefix and k.startswith(drop_prefix):
            k = k[len(drop_prefix) :]
        state[k] = v
    return state


# Tensors in BERT checkpoints that are not part of the encoder: buffers and pre-training heads.
NOT_ENCODER = ("position_ids", "cls.predictions", "cls.seq_relationship")


class BertModel(nn.Module):
    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.config = cfg
        self.embeddings = BertEmbeddings(cfg)
        self.encoder = BertEncoder(cfg)
        self.pooler = BertPooler(cfg)
        _init_bert_weights(self, cfg.initializer_range)

    def forward(self, input_ids, attention_mask=None, token_type_ids=None):
        """Returns (hidden states (B, T, C), pooled [CLS] output (B, C))."""
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        x = self.embeddings(input_ids, token_type_ids)
        mask = None
        if attention_mask is not None:
            # Additive mask (B, 1, 1, T), broadcast over heads and queries: 0 for real tokens, the
            # most negative float for padding (a little faster than a boolean mask in SDPA on CPU).
            keep = attention_mask.bool()[:, None, None, :]
            mask = torch.zeros(keep.shape, dtype=x.dtype, device=x.device)
            mask = mask.masked_fill(~keep, torch.finfo(x.dtype).min)
        h = self.encoder(x, mask)
        return h, self.pooler(h)

    @classmethod
    def from_pretrained(cls, name_or_dir) -> "BertModel":
        model_dir = hub.resolve_model_dir(name_or_dir)
        cfg = BertConfig.from_hf(_checked_config(model_dir))
        model = cls(cfg)
        state = _hf_state(model_dir, drop_prefix="bert.")
        hub.load_into(model.state_dict(), state, model_dir, skip=NOT_ENCODER + ("classifier.",))
        model.source_dir = model_dir
        return model


class BertForSequenceClassification(nn.Module):
    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.config = cfg
        self.bert = BertModel(cfg)
        p = (
            cfg.classifier_dropout
            if cfg.classifier_dropout is not None
            else cfg.hidden_dropout_prob
        )
        self.dropout = nn.Dropout(p)
        self.classifier = nn.Linear(cfg.hidden_size, cfg.num_labels)
        self.init_head()

    def init_head(self, generator=None):
        """A fresh classification head: normal(0, initializer_range) weights, zero bias."""
        with torch.no_grad():
            w = torch.randn(self.classifier.weight.shape, generator=generator)
            self.classifier.weight.copy_(w * self.config.initializer_range)
            self.classifier.bias.zero_()

    def forward(
        self, input_ids, attention_mask=None, token_type_ids=None, labels=None, reduction="mean"
    ):
        """Returns (logits (B, num_labels), loss or None)."""
        _, pooled = self.bert(input_ids, attention_mask, token_type_ids)
        logits = self.classifier(self.dropout(pooled))
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits.float(), labels, reduction=reduction)
        return logits, loss

    @classmethod
    def from_pretrained(
        cls, name_or_dir, num_labels=None, **overrides
    ) -> "BertForSequenceClassification":
        """A BERT folder or hub id; the head is loaded when the checkpoint has one of this size,
        else freshly initialised (`model.head_is_new` says which). `overrides` replace config
        values that do not change the weights' shapes (e.g. hidden_dropout_prob)."""
        model_dir = hub.resolve_model_dir(name_or_dir)
        hf_config = {**_checked_config(model_dir), **overrides}
        if num_labels is not None:
            hf_config = {**hf_config, "num_labels": num_labels}
        cfg = BertConfig.from_hf(hf_config)
        model = cls(cfg)
        state = _hf_state(model_dir)
        state = {
            k if k.startswith(("bert.", "classifier.")) else "bert." + k: v
            for k, v in state.items()
        }
        head = {k: state.pop(k) for k in ("classifier.weight", "classifier.bias") if k in state}
        own = {k: v for k, v in model.state_dict().items() if not k.startswith("classifier.")}
        hub.load_into(own, state, model_dir, skip=NOT_ENCODER)
        own_head = {k: v for k, v in model.state_dict().items() if k.startswith("classifier.")}
        model.head_is_new = not (
            head and all(head[k].shape == own_head[k].shape for k in head) and len(head) == 2
        )
        if not model.head_is_new:
            hub.load_into(own_head, head, model_dir)
        model.source_dir = model_dir
        return model

    def save_pretrained(self, out_dir, tokenizer_dir=None) -> None:
        """Write a folder that transformers' BertForSequenceClassification loads unchanged."""
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        state = {k: v.contiguous() for k, v in self.state_dict().items()}
        hub.write_safetensors(state, out_dir / "model.safetensors", {"format": "pt"})
        hub.write_config(self.config.to_hf(), out_dir)
        hub.copy_tokenizer_files(tokenizer_dir or getattr(self, "source_dir", None), out_dir)


def _checked_config(model_dir) -> dict:
    hf_config = hub.read_config(model_dir)
    hub.check_model_type(hf_config, model_dir, "bert")
    return hf_config
