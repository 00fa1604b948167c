"""The tokenizer a text column is read with: byte-pair encoding (BPE) learnt from the training split's texts only
(Hugging Face `tokenizers`), BERT's normalisation (Unicode clean-up, lower case, accents stripped) and pre-splitting
(whitespace and punctuation). Saved as one JSON string in the prepared encoding; tasks/shipped/text.py reads it
everywhere.

BPE without a continuing-subword prefix, not WordPiece: tokenizers' WordPiece trainer (and BPE with a `##` prefix)
numbers the continuation tokens in hash-map order, and those numbers break ties between equally frequent merges, so
the same texts gave another vocabulary in every process (huggingface/tokenizers#1794). Plain BPE breaks ties by
ids that follow from the sorted alphabet and the merges alone: the same texts give the same file, byte for byte
(tests/unit/test_text.py runs it in separate processes), so a text model can be rebuilt from its lineage."""

from __future__ import annotations

from tasks.shipped.text import SPECIAL, UNK, cleaned


def untrained():
    """The BPE tokenizer with its normalizer and pre-tokenizer, before learning a vocabulary (normalizing needs no
    vocabulary: prepare groups identical texts with it before the split)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers

    tokenizer = Tokenizer(models.BPE(unk_token=UNK))
    tokenizer.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True, lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    return tokenizer


def train_tokenizer(texts, vocab_size: int) -> str:
    """A BPE vocabulary of at most `vocab_size` entries (special tokens first: [PAD] is 0, [UNK] 1) learnt from
    `texts`; the tokenizer as its JSON string. A character never seen in training reads as [UNK]."""
    from tokenizers import trainers

    tokenizer = untrained()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, special_tokens=SPECIAL, show_progress=False)
    tokenizer.train_from_iterator((cleaned(t) for t in texts), trainer=trainer, length=len(texts))
    return tokenizer.to_str()
