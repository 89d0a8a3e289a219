"""Tiny random GPT-2 and an in-process byte-level BPE tokenizer: no downloads, built in a second."""

from __future__ import annotations

import json

import pytest
import torch

EOS = "<|endoftext|>"


def _training_sentences(shared_data_dir) -> list[str]:
    sentences = [
        "The mother tongue of Danielle Darrieux is French.",
        "Paris is the capital of France and Rome is the capital of Italy.",
        "What university did Watts Humphrey attend? Illinois Institute of Technology.",
        "nq question: who played desmond doss father in hacksaw ridge? Hugo Weaving.",
    ] * 20
    if shared_data_dir is not None:
        for record in json.loads((shared_data_dir / "counterfact" / "multi_counterfact-30.json").read_text()):
            rewrite = record["requested_rewrite"]
            sentences.append(rewrite["prompt"].format(rewrite["subject"]) + " " + rewrite["target_new"]["str"])
            sentences.extend(record["paraphrase_prompts"] + record["neighborhood_prompts"])
    return sentences


def build_tokenizer(sentences: list[str], vocab_size: int = 400):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(sentences, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=core, eos_token=EOS, pad_token=EOS, bos_token=EOS)


@pytest.fixture(scope="session")
def tiny_tok(request):
    from tests.conftest import SHARED_DATA

    return build_tokenizer(_training_sentences(SHARED_DATA if SHARED_DATA.is_dir() else None))


@pytest.fixture(scope="session")
def tiny_model(tiny_tok):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=len(tiny_tok), n_positions=256, n_embd=32, n_layer=2, n_head=2,
        bos_token_id=tiny_tok.eos_token_id, eos_token_id=tiny_tok.eos_token_id,
    )
    return GPT2LMHeadModel(config).eval()
