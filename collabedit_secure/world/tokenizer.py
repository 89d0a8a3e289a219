"""Byte-level BPE trained on the world corpus, saved as a GPT-2-style fast tokenizer.

Conventions match GPT-2: no BOS is added, a leading space is part of a word's first token
(so " " + object tokenises like the object inside a sentence), and "<|endoftext|>" is eos = pad = bos = unk.
"""

from __future__ import annotations

from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

EOS = "<|endoftext|>"


def train_tokenizer(texts: list[str], vocab_size: int) -> PreTrainedTokenizerFast:
    if not texts:
        raise ValueError("cannot train a tokenizer on an empty corpus")
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token=EOS, pad_token=EOS, bos_token=EOS,
                                   unk_token=EOS, model_max_length=1024)


def save_tokenizer(tok: PreTrainedTokenizerFast, model_dir: Path, n_positions: int) -> None:
    tok.model_max_length = n_positions
    tok.save_pretrained(str(model_dir))
