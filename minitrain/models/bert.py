"""BERT encoder and sentence-pair classifier. Submodule names mirror the Hugging Face checkpoint
keys (`bert.encoder.layer.0.attention.self.query.weight`, ...) so import is one loop with shape
checks.

Reference: Devlin et al. 2018 (BERT): post-LN encoder, [CLS] pooler with tanh. For speed the
encoder works on the real tokens of a padded batch only (see `Packing`); attention alone sees the
padded grid. Outputs at real tokens equal the padded computation's (tests compare them with
transformers').
"""

from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from minitrain import UserError
from minitrain.models import hub

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
            raise UserError(f"hidden_act {d.get('hidden_act')!r} is not supported by minitrain's BERT.")
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
        self.word_embeddings = nn.Embedding(cfg.vocab_size, cfg.hidden_size, padding_idx=cfg.pad_token_id)
        self.position_embeddings = nn.Embedding(cfg.max_position_embeddings, cfg.hidden_size)
        self.token_type_embeddings = nn.Embedding(cfg.type_vocab_size, cfg.hidden_size)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.hidden_dropout_prob)

    def forward(self, input_ids, token_type_ids, packing):
        """The embeddings of the real tokens only, packed: (N, C)."""
        B, T = input_ids.shape
        pos = torch.arange(T, device=input_ids.device).expand(B, T)  # (B, T)
        x = (
            self.word_embeddings(packing.pack(input_ids))
            + self.position_embeddings(packing.pack(pos))
            + self.token_type_embeddings(packing.pack(token_type_ids))
        )
        return self.dropout(self.LayerNorm(x))


class Packing:
    """Where the real tokens of a padded batch are. Every part of BERT except attention works
    token by token, so the encoder keeps the N real tokens of a (B, T) batch packed as (N, C) rows
    and goes back to the padded (B, T) grid only inside attention: padding then costs nothing in
    the matmuls, GELUs, LayerNorms and dropouts (the "unpadding" of NVIDIA's and MosaicML's BERT).
    Real tokens see exactly what they see in the padded computation. Finding N costs one host
    sync per forward on a GPU; the padding's share of the work (a quarter or more of a batch of
    sentence pairs) is saved.
    """

    def __init__(self, attention_mask, dtype):
        self.B, self.T = attention_mask.shape
        keep = attention_mask.bool()
        self.index = keep.flatten().nonzero().squeeze(1)  # (N,) positions in the flat B*T grid
        # additive attention mask (B, 1, 1, T), broadcast over heads and queries: 0 for real
        # keys, the most negative float for padding (a little faster than a boolean one on CPU)
        self.attn_mask = torch.zeros(keep.shape, dtype=dtype, device=keep.device)
        self.attn_mask = self.attn_mask.masked_fill(~keep, torch.finfo(dtype).min)[:, None, None]

    def pack(self, x):
        """(B, T, ...) -> (N, ...): the real tokens' rows."""
        return x.flatten(0, 1).index_select(0, self.index)

    def unpack(self, x):
        """(N, ...) -> (B, T, ...), zeros at the padding."""
        grid = x.new_zeros(self.B * self.T, *x.shape[1:])
        return grid.index_copy(0, self.index, x).view(self.B, self.T, *x.shape[1:])


class BertSelfAttention(nn.Module):
    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.n_head, self.dropout = cfg.num_attention_heads, cfg.attention_probs_dropout_prob
        self.query = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.key = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.value = nn.Linear(cfg.hidden_size, cfg.hidden_size)

    def forward(self, x, packing):
        """x: (N, C) packed real tokens -> (N, C)."""
        B, T, C = packing.B, packing.T, x.size(1)
        nh, hs = self.n_head, C // self.n_head
        # one matmul for q, k and v, then one trip to the padded grid: (B, T, 3, nh, hs)
        if all(type(m) is nn.Linear for m in (self.query, self.key, self.value)):
            w = torch.cat([self.query.weight, self.key.weight, self.value.weight])
            b = torch.cat([self.query.bias, self.key.bias, self.value.bias])
            qkv = F.linear(x, w, b)
        else:  # LoRA adapters on them (minitrain.lora): each layer's own forward adds its adapter
            qkv = torch.cat([self.query(x), self.key(x), self.value(x)], dim=-1)
        qkv = packing.unpack(qkv).view(B, T, 3, nh, hs)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, nh, T, hs)
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=packing.attn_mask, dropout_p=self.dropout if self.training else 0.0
        )
        return packing.pack(y.transpose(1, 2).reshape(B, T, C))  # (N, C)


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

    def forward(self, x, packing):
        return self.output(self.self(x, packing), x)


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

    def forward(self, x, packing):
        x = self.attention(x, packing)
        return self.output(self.intermediate(x), x)


class BertEncoder(nn.Module):
    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.layer = nn.ModuleList(BertLayer(cfg) for _ in range(cfg.num_hidden_layers))

    def forward(self, x, packing):
        for layer in self.layer:
            x = layer(x, packing)
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
        k = k.replace("LayerNorm.gamma", "LayerNorm.weight").replace("LayerNorm.beta", "LayerNorm.bias")
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
        """Returns (hidden states (B, T, C), zero at padding; pooled [CLS] output (B, C))."""
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        packing = Packing(attention_mask, self.embeddings.word_embeddings.weight.dtype)
        h = self.encoder(self.embeddings(input_ids, token_type_ids, packing), packing)
        h = packing.unpack(h)  # (B, T, C), zeros at the padding
        return h, self.pooler(h)

    @classmethod
    def from_pretrained(cls, name_or_dir) -> "BertModel":
        model_dir = hub.resolve_model_dir(name_or_dir)
        cfg = BertConfig.from_hf(_checked_config(model_dir))
        model = cls(cfg)
        state = _hf_state(model_dir, drop_prefix="bert.")
        hub.load_into(model.state_dict(), state, model_dir, skip=NOT_ENCODER + ("classifier.",))
        return model


class BertForSequenceClassification(nn.Module):
    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.config = cfg
        self.bert = BertModel(cfg)
        p = cfg.classifier_dropout if cfg.classifier_dropout is not None else cfg.hidden_dropout_prob
        self.dropout = nn.Dropout(p)
        self.classifier = nn.Linear(cfg.hidden_size, cfg.num_labels)
        self.head_is_new = True  # a fresh head; from_pretrained says whether the checkpoint had one
        self.init_head()

    def compile_blocks(self) -> None:
        """Regional compilation: each encoder layer compiled in place (see GPT2.compile_blocks)."""
        for layer in self.bert.encoder.layer:
            layer.compile()

    def init_head(self, generator=None):
        """A fresh classification head: normal(0, initializer_range) weights, zero bias."""
        with torch.no_grad():
            w = torch.randn(self.classifier.weight.shape, generator=generator)
            self.classifier.weight.copy_(w * self.config.initializer_range)
            self.classifier.bias.zero_()

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, labels=None, reduction="mean"):
        """Returns (logits (B, num_labels), loss or None)."""
        _, pooled = self.bert(input_ids, attention_mask, token_type_ids)
        logits = self.classifier(self.dropout(pooled))
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits.float(), labels, reduction=reduction)
        return logits, loss

    @classmethod
    def from_pretrained(cls, name_or_dir, num_labels=None, **overrides) -> "BertForSequenceClassification":
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
        state = {k if k.startswith(("bert.", "classifier.")) else "bert." + k: v for k, v in state.items()}
        head = {k: state.pop(k) for k in ("classifier.weight", "classifier.bias") if k in state}
        own = {k: v for k, v in model.state_dict().items() if not k.startswith("classifier.")}
        hub.load_into(own, state, model_dir, skip=NOT_ENCODER)
        own_head = {k: v for k, v in model.state_dict().items() if k.startswith("classifier.")}
        model.head_is_new = not (head and all(head[k].shape == own_head[k].shape for k in head) and len(head) == 2)
        if not model.head_is_new:
            hub.load_into(own_head, head, model_dir)
        return model

    def save_pretrained(self, out_dir, tokenizer_dir=None) -> None:
        """Write a folder that transformers' BertForSequenceClassification loads unchanged."""
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        state = {k: v.contiguous() for k, v in self.state_dict().items()}
        hub.write_safetensors(state, out_dir / "model.safetensors", {"format": "pt"})
        hub.write_config(self.config.to_hf(), out_dir)
        hub.copy_tokenizer_files(tokenizer_dir, out_dir)


def _checked_config(model_dir) -> dict:
    hf_config = hub.read_config(model_dir)
    hub.check_model_type(hf_config, model_dir, "bert")
    return hf_config
