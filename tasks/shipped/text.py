"""Free text → token ids, with the tokenizer `prepare` learnt from the training split (Hugging Face `tokenizers`,
one `tokenizer.json` string): the same library and the same file in the stages, in batch scoring and in the Bento,
so a text is split into the same ids wherever it is read (no torch here).

The rule for awkward text, the same everywhere: NUL and every other control character but tab, newline and
carriage return become a space; an empty or whitespace-only text is kept and encodes to no tokens (all padding:
the model answers from the text's absence and any other columns); a text longer than the maximum length is cut to
its first `length` tokens (counted: validation reports the truncated share).
"""

from __future__ import annotations

import unicodedata

import numpy as np

PAD, UNK = "[PAD]", "[UNK]"
SPECIAL = [PAD, UNK, "[CLS]", "[SEP]", "[MASK]"]  # PAD is id 0, UNK id 1 (train_tokenizer puts them first)


class BadText(ValueError):
    """A text that cannot be read; the message names which one and why."""


def cleaned(text: str) -> str:
    """`text` with NUL and the other control characters (but tab, newline and carriage return) as spaces."""
    if text.isprintable():
        return text
    return "".join(" " if unicodedata.category(c) == "Cc" and c not in "\t\n\r" else c for c in text)


def load_tokenizer(serialized: str):
    """The tokenizer `prepare` saved (its JSON string), with no padding or truncation of its own (encode does both)."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_str(serialized)
    tokenizer.no_padding()
    tokenizer.no_truncation()
    return tokenizer


def normalized(tokenizer, text: str) -> str:
    """`text` as the tokenizer sees it before splitting (lower case, accents and spacing as its normalizer does):
    texts equal here are the same example to the model (prepare keeps them in one split)."""
    text = cleaned(text)
    return " ".join((tokenizer.normalizer.normalize_str(text) if tokenizer.normalizer else text).split())


def encode_texts(tokenizer, texts: list[str], length: int) -> tuple[np.ndarray, np.ndarray]:
    """N×length token ids (int64, padded with 0 = [PAD], cut after `length`) and each text's token count before
    cutting (what validation and skew checks read: truncation and length)."""
    encoded = tokenizer.encode_batch([cleaned(t) for t in texts], add_special_tokens=False)
    ids = np.zeros((len(texts), length), dtype=np.int64)
    counts = np.zeros(len(texts), dtype=np.int64)
    for i, one in enumerate(encoded):
        counts[i] = len(one.ids)
        kept = one.ids[:length]
        ids[i, : len(kept)] = kept
    return ids, counts


def text_layout(spec: dict, features: int) -> dict | None:
    """Where the token ids sit in an encoded row of `features` values (`spec`: tasks/common/tables.py describe's),
    for the model: the other columns' width first, then `columns` × `length` ids below `vocab`; None without text."""
    if not spec.get("text"):
        return None
    columns, length = len(spec["text"]), spec["text"][0]["length"]
    return {"dense": features - columns * length, "columns": columns, "length": length, "vocab": spec["vocab_size"]}


def trimmed(features: np.ndarray, layout: dict | None, step: int = 8) -> np.ndarray:
    """Encoded rows (N×F, `layout`: where their token ids sit: text_layout) with the padding
    after the last token any of them holds cut off, each text column alike, in steps of `step` tokens: the input of
    a model exported with a dynamic sequence length (tasks/compress/variants.py). Padding changes no answer, and a
    Transformer's cost grows with the length, so a request of short messages is not padded to the longest training
    text's length."""
    if not layout or not len(features):
        return features
    dense, columns, length = layout["dense"], layout["columns"], layout["length"]
    ids = features[:, dense:].reshape(len(features), columns, length)
    used = np.flatnonzero((ids != 0).any(axis=(0, 1)))
    keep = min(length, max(step, -(-(int(used[-1]) + 1 if len(used) else 0) // step) * step))
    if keep == length:
        return features
    return np.hstack([features[:, :dense], ids[:, :, :keep].reshape(len(features), columns * keep)])


def takes_any_length(session) -> bool:
    """Whether an ONNX Runtime session's model reads rows of any width (exported with a dynamic sequence length)."""
    shape = session.get_inputs()[0].shape
    return len(shape) == 2 and not isinstance(shape[1], int)


def text_value(value, where: str) -> str:
    """A served or scored cell as text: a string (None or NaN: empty); anything else, or a string holding a lone
    surrogate (not Unicode text: JSON can carry one), is refused naming `where`."""
    if value is None or (isinstance(value, float) and value != value):
        return ""
    if not isinstance(value, str):
        raise BadText(f"{where}: expected text or null, got {type(value).__name__}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as err:
        raise BadText(f"{where}: not valid Unicode text (a lone surrogate at character {err.start})") from err
    return value
