"""The tokenizer a text column is read with: WordPiece learnt from the training split's texts only (Hugging Face
`tokenizers`), BERT's normalisation (Unicode clean-up, lower case, accents stripped) and pre-splitting (whitespace
and punctuation). Saved as one JSON string in the prepared encoding; tasks/shipped/text.py reads it everywhere."""

from __future__ import annotations

from tasks.shipped.text import SPECIAL, cleaned


def untrained():
    """The WordPiece tokenizer with its normalizer and pre-tokenizer, before learning a vocabulary (normalizing
    needs no vocabulary: prepare groups identical texts with it before the split)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers

    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]", max_input_chars_per_word=100))
    tokenizer.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True, lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    return tokenizer


def train_tokenizer(texts, vocab_size: int) -> str:
    """A WordPiece vocabulary of at most `vocab_size` entries (special tokens first: [PAD] is 0, [UNK] 1) learnt
    from `texts`; the tokenizer as its JSON string."""
    from tokenizers import decoders, trainers

    tokenizer = untrained()
    tokenizer.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, min_frequency=2, special_tokens=SPECIAL,
                                        show_progress=False)
    tokenizer.train_from_iterator((cleaned(t) for t in texts), trainer=trainer, length=len(texts))
    return tokenizer.to_str()
