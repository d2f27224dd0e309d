"""BERT's uncased WordPiece tokenizer, from a ``vocab.txt``: what all-MiniLM-L6-v2 was trained with.

Two steps, as Google's BERT ``tokenization.py`` (and Hugging Face's ``BertTokenizer``, whose
``tokenizer.json`` the MiniLM package ships) define them:

1. **Basic**: drop NUL, U+FFFD and control characters, turn every whitespace into a space, put
   spaces around CJK ideographs, lower-case, strip accents (NFD, then drop combining marks:
   ``strip_accents`` unset follows ``do_lower_case``), split on whitespace and on every
   punctuation character (ASCII symbols and Unicode category P*).
2. **WordPiece**: each word is split greedily, longest vocabulary match first, continuation
   pieces prefixed ``##``; a word with no split, or longer than 100 characters, is ``[UNK]``.

A sequence is ``[CLS] pieces [SEP]``, cut to ``max_length`` ids (the model's
``max_seq_length``, 256) by dropping pieces before ``[SEP]``, as sentence-transformers truncates.
``tests/test_study.py`` holds the ids equal to the reference tokenizer's on the shipped sentences.
"""
from __future__ import annotations

import os
import unicodedata

MAX_WORD_CHARS = 100  # BERT's max_input_chars_per_word: longer words are [UNK]
SPECIAL = ("[PAD]", "[UNK]", "[CLS]", "[SEP]")
# CJK ideograph blocks that get spaces around them (BERT tokenization.py, _is_chinese_char)
CJK_RANGES = ((0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2A6DF), (0x2A700, 0x2B73F), (0x2B740, 0x2B81F),
              (0x2B820, 0x2CEAF), (0xF900, 0xFAFF), (0x2F800, 0x2FA1F))


class WordPiece:
    """Token ids of text: ``WordPiece(vocab_path)(["a sentence", ...]) -> [[101, ..., 102], ...]``."""

    def __init__(self, vocab_path, max_length: int = 256):
        vocab_path = os.fspath(vocab_path)
        with open(vocab_path, encoding="utf-8") as fh:
            tokens = [line.rstrip("\n") for line in fh]
        self.vocab = {t: i for i, t in enumerate(tokens)}
        missing = [t for t in SPECIAL if t not in self.vocab]
        if missing:
            raise ValueError(f"{vocab_path}: not a BERT vocabulary (no {missing[0]} token)")
        if max_length < 2:
            raise ValueError(f"max_length must leave room for [CLS] and [SEP], got {max_length}")
        self.max_length = max_length
        self.pad_id, self.unk_id, self.cls_id, self.sep_id = (self.vocab[t] for t in SPECIAL)

    def __call__(self, texts: list[str]) -> list[list[int]]:
        return [self.encode(t) for t in texts]

    def encode(self, text: str) -> list[int]:
        """``[CLS] pieces [SEP]`` of one text, at most ``max_length`` ids."""
        pieces = [i for word in basic_tokens(text) for i in self.word_ids(word)]
        return [self.cls_id] + pieces[:self.max_length - 2] + [self.sep_id]

    def word_ids(self, word: str) -> list[int]:
        """The ids of one word's pieces, longest match first; ``[UNK]`` if it does not split."""
        if len(word) > MAX_WORD_CHARS:
            return [self.unk_id]
        ids, start = [], 0
        while start < len(word):
            for end in range(len(word), start, -1):
                piece = word[start:end] if start == 0 else "##" + word[start:end]
                if piece in self.vocab:
                    ids.append(self.vocab[piece])
                    start = end
                    break
            else:
                return [self.unk_id]
        return ids


def basic_tokens(text: str) -> list[str]:
    """Words and punctuation of ``text``: cleaned, lower-cased, accents stripped (step 1 above)."""
    cleaned = []
    for ch in text:
        cp = ord(ch)
        if cp == 0 or cp == 0xFFFD or _is_control(ch):
            continue
        if _is_whitespace(ch):
            cleaned.append(" ")
        elif any(lo <= cp <= hi for lo, hi in CJK_RANGES):
            cleaned.append(f" {ch} ")
        else:
            cleaned.append(ch)
    words = []
    for token in "".join(cleaned).split():
        token = "".join(c for c in unicodedata.normalize("NFD", token.lower()) if unicodedata.category(c) != "Mn")
        words.extend(_split_punctuation(token))
    return words


def _split_punctuation(token: str) -> list[str]:
    out, current = [], []
    for ch in token:
        if _is_punctuation(ch):
            if current:
                out.append("".join(current))
                current = []
            out.append(ch)
        else:
            current.append(ch)
    if current:
        out.append("".join(current))
    return out


def _is_whitespace(ch: str) -> bool:
    return ch in " \t\n\r" or unicodedata.category(ch) == "Zs"


def _is_control(ch: str) -> bool:
    return ch not in "\t\n\r" and unicodedata.category(ch).startswith("C")


def _is_punctuation(ch: str) -> bool:
    cp = ord(ch)  # BERT counts every non-alphanumeric ASCII symbol ($, ^, `, ...) as punctuation
    return 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126 or \
        unicodedata.category(ch).startswith("P")
