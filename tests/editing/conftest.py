"""Tiny random-init models of each supported family and an in-process byte-level BPE tokenizer.

Nothing is downloaded. Models are float64 where tests compare to 1e-9 (see `gpt2_f64`).
"""

from __future__ import annotations

import pytest
import torch
import transformers
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

from collabedit_secure.editing import EditRequest, MemitHparams

SUBJECTS = ["Paris", "Danielle Darrieux", "Toko Yasuda", "Autonomous University of Madrid", "Apple A5",
            "Edwin of Northumbria", "Anaal Nathrakh", "Thomas Joannes Stieltjes", "Honus Wagner", "Lyon"]
RELATIONS = ["The mother tongue of {} is", "{} is a native speaker of", "{}, which is located in",
             "The headquarters of {} is in", "{} plays the instrument", "{} was created by"]
OBJECTS = ["French", "English", "Spain", "Apple", "Google", "piano", "guitar", "Berlin", "Tokyo", "Toronto"]


def corpus() -> list[str]:
    lines = []
    for i, subject in enumerate(SUBJECTS):
        for j, relation in enumerate(RELATIONS):
            lines.append(relation.format(subject) + " " + OBJECTS[(i + j) % len(OBJECTS)] + ".")
    lines += ["The", "Therefore", "Because", "I", "You", "is a"]
    return lines * 3


@pytest.fixture(scope="session")
def tok():
    return make_tokenizer()


def make_tokenizer():
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator(corpus(), trainer)
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|endoftext|>",
                                                pad_token="<|endoftext|>")
    return fast


def make_sentencepiece_style_tokenizer():
    """The Llama-2 / Mistral tokenizer.json layout: "▁" prepended and for every space, a BOS, no
    pre-tokenizer, so a word tokenised on its own gains a lone "▁" (what MEMIT's index rule trips on)."""
    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    bpe.pre_tokenizer = pre_tokenizers.Split("▁", behavior="merged_with_next")  # word-bounded merges
    bpe.train_from_iterator(corpus(), trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", "<s>", "</s>"]))
    bpe.pre_tokenizer = None
    bpe.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.Fuse(), decoders.Strip(" ", 1, 0)])
    bpe.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", bpe.token_to_id("<s>"))])
    return transformers.PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<s>", eos_token="</s>",
                                                pad_token="</s>", unk_token="<unk>")


def tiny_config(family: str, vocab: int):
    common = dict(vocab_size=vocab, bos_token_id=0, eos_token_id=0, pad_token_id=0)
    if family == "gpt2":
        return transformers.GPT2Config(n_layer=4, n_embd=32, n_head=2, n_positions=64,
                                       resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, **common)
    if family == "gptj":
        return transformers.GPTJConfig(n_layer=4, n_embd=32, n_head=2, n_positions=64, rotary_dim=8, **common)
    if family == "gpt_neox":
        return transformers.GPTNeoXConfig(num_hidden_layers=4, hidden_size=32, num_attention_heads=2,
                                          intermediate_size=64, max_position_embeddings=64, **common)
    llama_like = dict(num_hidden_layers=4, hidden_size=32, num_attention_heads=2, num_key_value_heads=2,
                      intermediate_size=48, max_position_embeddings=64, **common)
    return {"llama": transformers.LlamaConfig, "mistral": transformers.MistralConfig,
            "qwen2": transformers.Qwen2Config}[family](**llama_like)


def tiny_model(family: str, tok, dtype=torch.float32, seed: int = 0):
    torch.manual_seed(seed)
    config = tiny_config(family, len(tok))
    config.initializer_range = 0.2  # the default 0.02 leaves a tiny model's outputs nearly input-blind
    model = transformers.AutoModelForCausalLM.from_config(config)
    return model.to(dtype).eval()


@pytest.fixture(scope="session")
def gpt2_f64(tok):
    return tiny_model("gpt2", tok, torch.float64)


def tiny_hparams(**overrides) -> MemitHparams:
    values = dict(layers=[1, 2], v_loss_layer=3, v_num_grad_steps=4, mom2_update_weight=50.0,
                  context_template_length_params=[[6, 5]])
    values.update(overrides)
    return MemitHparams(**values)


def tiny_requests(n: int = 6) -> list[EditRequest]:
    return [EditRequest(f"case{i}", RELATIONS[i % len(RELATIONS)], SUBJECTS[i % len(SUBJECTS)],
                        OBJECTS[(i * 3 + 1) % len(OBJECTS)]) for i in range(n)]


def random_c0(d: int, seed: int = 0) -> torch.Tensor:
    """A well-conditioned stand-in for E[k kᵀ] (tests of the algebra; real C0 comes from layer_stats)."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(d, 4 * d, generator=g, dtype=torch.float64)
    return a @ a.T / (4 * d)
