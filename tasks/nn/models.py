"""The model families params.yaml can select: a small CNN (default), an MLP and a small Vision Transformer; for
text, a Transformer encoder over token embeddings and a bag of token and bigram embeddings (fastText's)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from tasks.common.config import TrainParams


class CNN(nn.Module):
    """Three 3×3 conv blocks, one 2× pooling, global average pooling, a linear head."""

    def __init__(self, channels: tuple[int, int, int], n_classes: int, dropout: float, in_channels: int = 1) -> None:
        super().__init__()
        c1, c2, c3 = channels
        self.features = nn.Sequential(
            _conv_block(in_channels, c1),
            _conv_block(c1, c2),
            nn.MaxPool2d(2),
            _conv_block(c2, c3),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(c3, n_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def _conv_block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


class MLP(nn.Module):
    """Flattened pixels through ReLU hidden layers."""

    def __init__(self, n_inputs: int, hidden: tuple[int, ...], n_classes: int, dropout: float) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        width = n_inputs
        for size in hidden:
            layers += [nn.Linear(width, size), nn.ReLU(inplace=True), nn.Dropout(dropout)]
            width = size
        layers.append(nn.Linear(width, n_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class ViT(nn.Module):
    """A small Vision Transformer: non-overlapping patches, a class token, pre-norm encoder blocks, a linear head."""

    def __init__(self, image_size: tuple[int, int], channels: int, patch: int, dim: int, depth: int, heads: int,
                 n_classes: int, dropout: float) -> None:
        super().__init__()
        h, w = image_size
        tokens = (h // patch) * (w // patch)
        self.embed = nn.Conv2d(channels, dim, patch, stride=patch)
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.position = nn.Parameter(torch.randn(1, tokens + 1, dim) * 0.02)
        layer = nn.TransformerEncoderLayer(dim, heads, dim_feedforward=2 * dim, dropout=dropout, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.head = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, n_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.embed(x).flatten(2).transpose(1, 2)
        tokens = torch.cat([self.cls.expand(x.shape[0], -1, -1), tokens], dim=1) + self.position  # shape[0]: a dynamic batch in ONNX
        return self.head(self.encoder(tokens)[:, 0])


class TextNet(nn.Module):
    """Encoded table rows whose last `columns × length` values are token ids (tasks/common/tables.py): each text
    column's tokens embedded (shared embeddings; id 0 is padding) and pooled by their mean over the real tokens,
    after a Transformer encoder (`transformer`: token and position embeddings, pre-norm blocks, padding masked) or
    beside hashed bigram embeddings (`ngram`: fastText's bag of n-grams, no attention: trains in seconds); the
    table's other `dense` encoded columns through one ReLU layer; all concatenated into a linear head."""

    def __init__(self, text: dict, family: str, params: TrainParams, n_classes: int) -> None:
        super().__init__()
        self.dense, self.columns, self.length, self.vocab = text["dense"], text["columns"], text["length"], text["vocab"]
        self.family, self.buckets, dim = family, params.ngram_buckets if family == "ngram" else 0, params.text_dim
        self.embed = nn.Embedding(self.vocab + self.buckets, dim, padding_idx=0)
        if family == "transformer":
            self.position = nn.Parameter(torch.randn(1, self.length, dim) * 0.02)
            layer = nn.TransformerEncoderLayer(dim, params.text_heads, dim_feedforward=2 * dim, dropout=params.dropout,
                                               activation="gelu", batch_first=True, norm_first=True)
            self.encoder = nn.TransformerEncoder(layer, params.text_depth, enable_nested_tensor=False)
        hidden = params.mlp_hidden[-1] if self.dense else 0
        self.dense_net = nn.Sequential(nn.Linear(self.dense, hidden), nn.ReLU(inplace=True)) if self.dense else None
        self.head = nn.Sequential(nn.LayerNorm(self.columns * dim + hidden), nn.Dropout(params.dropout),
                                  nn.Linear(self.columns * dim + hidden, n_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # ids arrive as float32 (one input matrix per row); rounded and clamped, any value is a valid index
        # any length up to self.length (ONNX: a dynamic one): a row's ids may come with less padding than trained
        ids = x[:, self.dense:].round().clamp(0, self.vocab - 1).long().reshape(x.shape[0] * self.columns, -1)
        real = ids != 0
        tokens = self.embed(ids)
        if self.family == "transformer":
            # a text with no tokens would mask every key (NaN attention): its first slot stays visible
            hidden = torch.cat([torch.zeros_like(real[:, :1]), ~real[:, 1:]], dim=1)
            tokens = tokens + self.position[:, : ids.shape[1]]
            if torch.onnx.is_in_onnx_export():  # torch's own attention exports with the traced length fixed
                for layer in self.encoder.layers:
                    tokens = _encoder_layer(layer, tokens, hidden)
            else:
                tokens = self.encoder(tokens, src_key_padding_mask=hidden)
        elif self.buckets:
            pairs = real[:, :-1] & real[:, 1:]
            bigrams = (ids[:, :-1] * 1_000_003 + ids[:, 1:]) % self.buckets + self.vocab
            tokens = torch.cat([tokens, self.embed(bigrams)], dim=1)
            real = torch.cat([real, pairs], dim=1)
        weights = real.unsqueeze(-1).to(tokens.dtype)
        pooled = (tokens * weights).sum(1) / weights.sum(1).clamp(min=1.0)
        parts = [pooled.reshape(x.shape[0], -1)]
        if self.dense_net is not None:
            parts.insert(0, self.dense_net(x[:, : self.dense]))
        return self.head(torch.cat(parts, dim=1))


def _encoder_layer(layer: nn.TransformerEncoderLayer, x: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
    """A pre-norm `layer` in eval (no dropout) written with shapes read from `x`, the same computation as its own
    forward: exported to ONNX by tracing, nn.MultiheadAttention fixes the sequence length it was traced with
    (pytorch/pytorch#117209), this reads rows of any length. `hidden`: True where a key is padding."""
    attention = layer.self_attn
    batch, length, width = x.shape
    heads = attention.num_heads
    y = layer.norm1(x)
    q, k, v = F.linear(y, attention.in_proj_weight, attention.in_proj_bias).chunk(3, dim=-1)
    q, k, v = (t.reshape(batch, length, heads, -1).transpose(1, 2) for t in (q, k, v))
    scores = q @ k.transpose(-2, -1) / math.sqrt(attention.head_dim)  # an int (Torch-Pruning keeps it), not traced
    weights = torch.softmax(scores.masked_fill(hidden[:, None, None, :], float("-inf")), dim=-1)
    x = x + attention.out_proj((weights @ v).transpose(1, 2).reshape(batch, length, width))
    return x + layer.linear2(layer.activation(layer.linear1(layer.norm2(x))))


class TfidfNet(nn.Module):
    """Logistic regression over TF-IDF, as a network: each text column's tokens and hashed token bigrams (the ids
    TextNet's `ngram` uses) counted, sublinear (1 + log count), times their inverse document frequency, L2-normalised
    per column, beside the table's other encoded columns, into one linear layer. Its idf and weights are fitted by
    scikit-learn (tasks/train/tfidf.py), not by gradient steps; as a module it exports, compresses and serves like the
    other text models, on the same token ids (no second tokenizer)."""

    def __init__(self, text: dict, params: TrainParams, n_classes: int) -> None:
        super().__init__()
        self.dense, self.columns, self.length = text["dense"], text["columns"], text["length"]
        self.vocab = text["vocab"]
        self.buckets = params.ngram_buckets
        self.features = self.vocab + self.buckets
        self.register_buffer("idf", torch.ones(self.columns, self.features))
        self.head = nn.Linear(self.dense + self.columns * self.features, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ids = x[:, self.dense:].round().clamp(0, self.vocab - 1).long().reshape(x.shape[0] * self.columns, -1)
        real = ids != 0
        if self.buckets:
            bigrams = (ids[:, :-1] * 1_000_003 + ids[:, 1:]) % self.buckets + self.vocab
            ids, real = torch.cat([ids, bigrams], dim=1), torch.cat([real, real[:, :-1] & real[:, 1:]], dim=1)
        counts = torch.zeros(ids.shape[0], self.features, dtype=x.dtype, device=x.device)
        counts = counts.scatter_add(1, ids, real.to(x.dtype))
        tf = torch.where(counts > 0, 1.0 + torch.log(counts.clamp(min=1.0)), torch.zeros_like(counts))
        weighted = tf.reshape(x.shape[0], self.columns, self.features) * self.idf
        normalised = weighted / weighted.norm(dim=-1, keepdim=True).clamp(min=1e-12)
        return self.head(torch.cat([x[:, : self.dense], normalised.reshape(x.shape[0], -1)], dim=1))


def token_layout(model: nn.Module) -> dict | None:
    """Where the token ids sit in the rows `model` reads (tasks/common/tables.py text_layout), None for a model
    without text: its rows may be cut after their last token (tasks/shipped/text.py trimmed)."""
    if not isinstance(model, (TextNet, TfidfNet)):
        return None
    return {"dense": model.dense, "columns": model.columns, "length": model.length, "vocab": model.vocab}


def build_model(params: TrainParams, input_shape: tuple[int, ...], n_classes: int, text: dict | None = None) -> nn.Module:
    """The model `params.model` names, sized for `input_shape` (C, H, W for images; F for a table) and `n_classes`;
    `text` (tasks/common/tables.py text_layout) when a table's last columns are token ids."""
    from tasks.common.errors import ConfigError

    if text:
        if params.model not in ("auto", "transformer", "ngram", "tfidf"):
            raise ConfigError(f"train.model={params.model} cannot read text; a table with a text column trains with "
                              "train.model: transformer, ngram, tfidf or auto")
        if params.model == "tfidf":
            return TfidfNet(text, params, n_classes)
        return TextNet(text, "transformer" if params.model == "auto" else params.model, params, n_classes)
    if params.model in ("transformer", "ngram", "tfidf"):
        raise ConfigError(f"train.model={params.model} needs a text column; this data has none")
    if len(input_shape) == 1:  # encoded table features
        if params.model not in ("mlp", "auto"):
            raise ConfigError(f"train.model={params.model} needs images; a table trains with train.model: mlp")
        return MLP(input_shape[0], params.mlp_hidden, n_classes, params.dropout)
    c, h, w = input_shape
    if params.model in ("cnn", "auto"):
        return CNN(params.cnn_channels, n_classes, params.dropout, in_channels=c)
    if params.model == "vit":
        if h % params.vit_patch or w % params.vit_patch:
            raise ConfigError(f"train.vit_patch={params.vit_patch} does not divide the {h}×{w} images")
        return ViT((h, w), c, params.vit_patch, params.vit_dim, params.vit_depth, params.vit_heads, n_classes, params.dropout)
    return MLP(c * h * w, params.mlp_hidden, n_classes, params.dropout)
