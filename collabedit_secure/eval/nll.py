"""Length-normalised target NLL, the scoring primitive of the CounterFact metrics.

NLL(o | x) = -(1/|o|) sum_j log p(o_j | x, o_<j), with o tokenised as tok(" " + o) and logits read
at position len(tok(x)) + j - 1 (MEMIT's `test_batch_prediction`). Works with right or left padding.
"""

from __future__ import annotations

import torch

from collabedit_secure.progress import progress, shown

from collabedit_secure.editing.tokens import context_limit, continuation_ids, quoted  # noqa: F401 (re-exported)
from collabedit_secure.eval.datasets import DatasetFormatError


class PromptTooLongError(DatasetFormatError):
    """A prompt (with its target) has more tokens than the model has positions."""


class NonFiniteModelError(ValueError):
    """The model computes NaN or Inf: every comparison with it is False, so its metrics would read as
    a model that fails every prompt rather than a broken one."""


def check_finite(rows: torch.Tensor, prompt_of) -> None:
    """Every row of the model's output finite, else an error naming `prompt_of(row)`'s prompt."""
    finite = torch.isfinite(rows.reshape(len(rows), -1)).all(dim=1)
    if not bool(finite.all()):
        prompt = prompt_of(int((~finite).nonzero()[0]))
        raise NonFiniteModelError(f"the model's output is NaN or Inf on prompt {quoted(prompt)}: its weights are "
                                  "broken (a diverged edit?); no metric is computed for it")


def check_fits(length: int, limit: int | None, what: str) -> None:
    # Past its context a learned-position model indexes off its embedding table: say so, never truncate.
    if limit is not None and length > limit:
        raise PromptTooLongError(f"{what} is {length} tokens, more than the model's context of {limit} tokens")


@torch.no_grad()
def target_nll(model, tok, prefixes: list[str], targets: list[str], batch_size: int = 64) -> torch.Tensor:
    """Mean per-token NLL of each target continuing its prefix; returns a float64 tensor of len(prefixes).

    Sequences go to the model shortest first, so a batch pads to about its own length (in the
    world's knowledge check, unsorted batches padded to twice the tokens they held).
    """
    if len(prefixes) != len(targets):
        raise ValueError(f"{len(prefixes)} prefixes but {len(targets)} targets")
    prefix_ids, target_ids = tokenize_pairs(model, tok, prefixes, targets)
    order = sorted(range(len(prefixes)), key=lambda i: len(prefix_ids[i]) + len(target_ids[i]))
    out = torch.empty(len(prefixes), dtype=torch.float64)
    batches = range(0, len(order), batch_size)
    for start in progress(batches, desc="eval: scoring", unit="batch", enabled=shown("eval"), leave=False):
        chunk = order[start : start + batch_size]
        out[chunk] = batch_nll(model, tok, [prefix_ids[i] for i in chunk], [target_ids[i] for i in chunk],
                               lambda row: prefixes[chunk[row]])
    return out


def tokenize_pairs(model, tok, prefixes: list[str], targets: list[str]) -> tuple[list[list[int]], list[list[int]]]:
    """Token ids of each prefix and of its target as it follows the prefix, each checked to fit."""
    limit = context_limit(model)
    prefix_ids, target_ids = [], []
    for prefix, target in zip(prefixes, targets):
        p = tok(prefix)["input_ids"]
        if not p:
            raise ValueError(f"prefix {prefix!r} tokenises to nothing; there is no position to score from")
        # The target continues the prefix: its ids as they follow the prefix, with no BOS in front.
        t = continuation_ids(tok, prefix, " " + target.strip())
        check_fits(len(p) + len(t), limit, f"prompt {quoted(prefix)} with target {quoted(target)}")
        prefix_ids.append(p)
        target_ids.append(t)
    return prefix_ids, target_ids


def batch_nll(model, tok, prefix_ids: list[list[int]], target_ids: list[list[int]], prompt_of) -> torch.Tensor:
    """One right-padded forward pass; the mean NLL of each row's target tokens (float64)."""
    device = next(model.parameters()).device
    seqs = [p + t for p, t in zip(prefix_ids, target_ids)]
    width = max(len(s) for s in seqs)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    input_ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    attention = torch.zeros((len(seqs), width), dtype=torch.long)
    for row, seq in enumerate(seqs):  # right padding: positions are counted from the start
        input_ids[row, : len(seq)] = torch.tensor(seq)
        attention[row, : len(seq)] = 1
    logits = model(input_ids=input_ids.to(device), attention_mask=attention.to(device)).logits
    out = torch.empty(len(seqs), dtype=torch.float64)
    for row, (p, t) in enumerate(zip(prefix_ids, target_ids)):
        # Only the positions that predict target tokens are normalised: the rest of the row is unused.
        token_logp = torch.log_softmax(logits[row, len(p) - 1 : len(p) + len(t) - 1].float(), dim=-1)
        token_logp = token_logp[torch.arange(len(t)), torch.tensor(t, device=logits.device)].cpu()
        check_finite(token_logp[None], lambda _: prompt_of(row))
        out[row] = -token_logp.double().mean()
    return out
