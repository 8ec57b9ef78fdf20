"""An offline T5-style tokenizer for the tiny DiT pipelines (SD3, Flux, PixArt-Sigma).

The real T5 tokenizers are SentencePiece Unigram models that would have to be
downloaded. This one is built in-process the way transformers' ``T5Tokenizer`` builds
any Unigram vocabulary (``T5Tokenizer(vocab=[(piece, score), ...])``): ``<pad>`` = 0,
``</s>`` = 1, ``<unk>`` = 2, then word pieces. The pieces are words and word parts of
OpenAI CLIP's BPE vocabulary (shipped inside the open_clip wheel, as for
:func:`cemaps.models.tiny.clip_tokenizer`), written in SentencePiece's form
(``"▁word"`` at a word start), so prompts split into T5-like pieces and end with
``</s>``, and padding carries ``<pad>``: what the captured token labels of a T5
stream look like with a real checkpoint.

Example:
    >>> tokenizer = t5_tokenizer()
    >>> tokenizer.convert_ids_to_tokens(tokenizer("a red lighthouse").input_ids)
    ['▁a', '▁red', '▁lighthouse', '</s>']
"""

from __future__ import annotations

import math
from functools import lru_cache

from transformers import T5Tokenizer

from cemaps.models.tiny import _clip_bpe

# pieces kept: enough for the shipped prompt suites' words to be whole pieces mostly
_WORDS = 12000
_WORD_PARTS = 2000


@lru_cache(maxsize=1)
def _t5_vocab() -> tuple[tuple[str, float], ...]:
    vocab, _ = _clip_bpe()
    words: list[str] = []
    parts: list[str] = []
    for token in sorted(vocab, key=vocab.get):  # CLIP's order: bytes, then merges by frequency
        if token.startswith("<|"):
            continue
        if token.endswith("</w>"):
            word = token[: -len("</w>")]
            if word.isalnum() and len(words) < _WORDS:
                words.append(word)
        elif token.isalnum() and len(parts) < _WORD_PARTS:
            parts.append(token)
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)] + [str(d) for d in range(10)]
    pieces: dict[str, float] = {"▁": -12.0}
    # Unigram scores are log-probabilities: frequent (early) pieces score higher, whole words beat parts
    for rank, word in enumerate(words):
        pieces.setdefault("▁" + word, -3.0 - math.log1p(rank))
    for rank, part in enumerate(parts):
        pieces.setdefault(part, -6.0 - math.log1p(rank))
    for letter in letters:  # every lowercase word can be spelt
        pieces.setdefault(letter, -14.0)
        pieces.setdefault("▁" + letter, -14.0)
    return (("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), *pieces.items())


def t5_tokenizer(model_max_length: int = 512) -> T5Tokenizer:
    """A T5-style Unigram tokenizer (pad 0, eos 1, unk 2) built with no download; lower-cases nothing."""
    return T5Tokenizer(vocab=list(_t5_vocab()), extra_ids=0, model_max_length=model_max_length)
