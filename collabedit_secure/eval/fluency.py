"""Fluency: top-k sampled generations and their n-gram entropy (MEMIT's "generation entropy").

MEMIT samples with top-k = 5 up to `max_out_len` tokens counting the prompt, tokenises each text
into words with nltk `word_tokenize`, and scores mean(2/3·H2, 4/3·H3) with H_n the base-2 entropy
of the word n-gram frequency distribution. `word_tokenize` needs the downloadable punkt model for
sentence splitting; we split sentences with a rule (after ., ! or ? followed by space) and then
apply the same Treebank-style word tokenizer, which needs no data.
"""

from __future__ import annotations

import inspect
import math
import re
import unicodedata
from collections import Counter
from collections.abc import Sequence

import torch
from nltk.tokenize import NLTKWordTokenizer

from collabedit_secure.eval.nll import check_finite, check_fits, context_limit, quoted
from collabedit_secure.progress import progress, shown

_WORDS = NLTKWordTokenizer()
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


@torch.no_grad()
def generate_texts(
    model,
    tok,
    prompts: Sequence[str],
    max_out_len: int = 100,
    top_k: int = 5,
    seed: int = 0,
    batch_size: int = 128,
) -> list[str]:
    """One top-k sample per prompt, each `max_out_len` tokens long including its prompt.

    Deterministic for a fixed seed and prompt list: sampling draws from a private CPU
    torch.Generator, never the global RNG. Prompts are batched by token length with left padding
    (so the newest token is always the last column) and explicit position ids.
    """
    if max_out_len < 1 or top_k < 1:
        raise ValueError(f"max_out_len and top_k must be positive, got {max_out_len} and {top_k}")
    encoded = [tok(prompt)["input_ids"] for prompt in prompts]
    limit = context_limit(model)
    check_fits(max_out_len, limit, "max_out_len (the length of each sample)")
    for prompt, ids in zip(prompts, encoded):
        if not ids:
            raise ValueError(f"generation prompt {prompt!r} tokenises to nothing")
        check_fits(len(ids), limit, f"generation prompt {quoted(prompt)}")
    order = sorted(range(len(prompts)), key=lambda i: len(encoded[i]))
    generator = torch.Generator().manual_seed(seed)
    texts: list[str] = [""] * len(prompts)
    batches = range(0, len(order), batch_size)
    for start in progress(batches, desc="eval: fluency samples", unit="batch", enabled=shown("eval"), leave=False):
        chunk = order[start : start + batch_size]
        outputs = _sample_batch(model, tok, [encoded[i] for i in chunk], max_out_len, top_k, generator)
        for index, ids in zip(chunk, outputs):
            texts[index] = _clean_text(tok.decode(ids, skip_special_tokens=True))
    return texts


def _sample_batch(model, tok, batch_ids, max_out_len, top_k, generator) -> list[list[int]]:
    device = next(model.parameters()).device
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    width = max(len(ids) for ids in batch_ids)
    input_ids = torch.full((len(batch_ids), width), pad, dtype=torch.long)
    attention = torch.zeros((len(batch_ids), width), dtype=torch.long)
    for row, ids in enumerate(batch_ids):
        input_ids[row, width - len(ids) :] = torch.tensor(ids)
        attention[row, width - len(ids) :] = 1
    steps = max(0, max_out_len - min(len(ids) for ids in batch_ids))
    sampled = []
    past, step_input, positions = None, input_ids, (attention.cumsum(-1) - 1).clamp(min=0)
    cache_arg, extra = _forward_options(model)
    last_position = (context_limit(model) or 2**62) - 1
    for _ in range(steps):
        out = model(
            input_ids=step_input.to(device),
            attention_mask=attention.to(device),
            position_ids=positions.to(device),
            use_cache=True,
            **{cache_arg: past},
            **extra,
        )
        past = getattr(out, cache_arg)
        next_logits = out.logits[:, -1, :].float().cpu()
        check_finite(next_logits, lambda row: tok.decode(batch_ids[row]))  # multinomial would fail unnamed
        next_token = _top_k_sample(next_logits, top_k, generator)
        sampled.append(next_token)
        step_input = next_token.unsqueeze(1)
        # A row with a long prompt runs on after its own max_out_len while shorter rows catch up; its
        # positions could pass the context. Only those discarded tokens are clamped: exact for the rest.
        positions = (positions[:, -1:] + 1).clamp(max=last_position)
        attention = torch.cat([attention, torch.ones((len(batch_ids), 1), dtype=torch.long)], dim=1)
    new_tokens = torch.stack(sampled, dim=1).tolist() if sampled else [[] for _ in batch_ids]
    # Every text is max_out_len tokens including its own prompt (shorter prompts get more new tokens).
    return [ids + new[: max(0, max_out_len - len(ids))] for ids, new in zip(batch_ids, new_tokens)]


def _forward_options(model) -> tuple[str, dict]:
    # transformers 5 renamed past_key_values to cache; older model classes still take the old name.
    # logits_to_keep=1 skips the vocabulary projection of every prompt position.
    params = inspect.signature(model.forward).parameters
    cache_arg = "cache" if "cache" in params else "past_key_values"
    extra = {"logits_to_keep": 1} if "logits_to_keep" in params else {}
    return cache_arg, extra


def _top_k_sample(logits: torch.Tensor, top_k: int, generator: torch.Generator) -> torch.Tensor:
    top_logits, top_ids = logits.topk(min(top_k, logits.shape[-1]), dim=-1)
    probs = torch.softmax(top_logits, dim=-1)
    choice = torch.multinomial(probs, 1, generator=generator)
    return top_ids.gather(1, choice).squeeze(1)


def _clean_text(text: str) -> str:
    # As MEMIT's generate_fast: ASCII-fold and join paragraphs.
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    return text.replace("\n\n", " ").replace("<|endoftext|>", "")


def word_tokens(text: str) -> list[str]:
    """Treebank-style word tokens, sentence by sentence (a data-free stand-in for word_tokenize)."""
    return [word for sentence in _SENTENCE_END.split(text) for word in _WORDS.tokenize(sentence)]


def ngram_entropy_bits(tokens: Sequence[str], n: int) -> float:
    """Base-2 entropy of the n-gram frequency distribution; 0 when there is no n-gram."""
    counts = Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))
    total = sum(counts.values())
    return -sum(c / total * math.log2(c / total) for c in counts.values()) if total else 0.0


def text_ngram_entropy(text: str, ns=(2, 3), weights=(2 / 3, 4 / 3)) -> float:
    """mean(w_n · H_n) over n, MEMIT's per-text fluency value (in bits)."""
    tokens = word_tokens(text)
    return sum(w * ngram_entropy_bits(tokens, n) for n, w in zip(ns, weights)) / len(ns)


def ngram_entropy(texts: Sequence[str]) -> float:
    """Mean per-text n-gram entropy over `texts` (one record's generations)."""
    if not texts:
        raise ValueError("ngram_entropy needs at least one text")
    return sum(text_ngram_entropy(text) for text in texts) / len(texts)
