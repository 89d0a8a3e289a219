"""Tokenisation helpers: padded batches and the subject's last-token index (MEMIT `subject_last`).

Indices are computed on the unpadded sequence and shifted by the number of leading pads, so right
and left padding give the same positions. Position ids are derived from the attention mask so a
left-padded row sees the same absolute positions as a right-padded one.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Batch:
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    lengths: torch.Tensor  # unpadded token counts
    starts: torch.Tensor  # leading pad counts (0 under right padding)

    def model_inputs(self) -> dict:
        position_ids = (self.attention_mask.cumsum(-1) - 1).clamp(min=0)
        return {"input_ids": self.input_ids, "attention_mask": self.attention_mask, "position_ids": position_ids}

    def absolute(self, row: int, index: int) -> int:
        """A position counted in the unpadded sequence, as a column of the padded batch."""
        return int(self.starts[row]) + index


def encode(tok, texts: list[str], device) -> Batch:
    """Texts as one padded batch (the tokenizer's padding side)."""
    _require_pad(tok)
    return _batch(tok(texts, padding=True, return_tensors="pt"), device)


def encode_ids(tok, rows: list[list[int]], device) -> Batch:
    """Token id sequences as one padded batch, padded as `encode` pads texts."""
    _require_pad(tok)
    return _batch(tok.pad({"input_ids": rows}, return_tensors="pt"), device)


def _require_pad(tok) -> None:
    if tok.pad_token_id is None:
        raise ValueError("tokenizer has no pad token; set tok.pad_token = tok.eos_token as MEMIT does")


def _batch(enc, device) -> Batch:
    mask = enc["attention_mask"]
    lengths = mask.sum(1)
    starts = (mask.cumsum(1) == 0).sum(1)  # leading zeros
    return Batch(enc["input_ids"].to(device), mask.to(device), lengths, starts)


def subject_last_index(tok, template: str, subject: str) -> int:
    """Index of the subject's last token in `template.format(subject)`: the token holding its last character.

    A fast tokenizer says where each token lies in the text, which also finds a token that runs past
    the subject's end ("Pari" in "Parisian"). Otherwise the text up to the subject's end is tokenised as
    one string (CollabEdit v1.1's rule, spec 1.4), with the special tokens the full prompt gets (a BOS,
    if the tokenizer adds one); the two agree wherever that text's tokens start the prompt's. MEMIT's
    rule tokenises prefix and " " + subject separately; that agrees for byte-level BPE (GPT-2, GPT-J,
    GPT-NeoX), but SentencePiece tokenizers (Llama, Mistral) give the lone word an extra "▁" token
    and the index lands one past the subject.
    """
    if template.count("{}") != 1:
        raise ValueError(f"template must contain exactly one '{{}}': {template!r}")
    if not subject.strip():
        raise ValueError("subject is empty")
    prefix = template[: template.index("{}")]
    if getattr(tok, "is_fast", False):
        last_char = len(prefix) + len(subject.rstrip()) - 1
        spans = tok(template.format(subject), return_offsets_mapping=True)["offset_mapping"]
        holding = [i for i, (start, end) in enumerate(spans) if start <= last_char < end]
        if holding:
            return holding[-1]
    return len(tok(prefix + subject)["input_ids"]) - 1


def continuation_ids(tok, prefix: str, continuation: str) -> list[int]:
    """The ids of `continuation` (with its leading space) as they follow `prefix` in one text.

    Tokenised alone, " Paris" is what the model reads after a prompt for byte-level BPE (MEMIT's
    way), but a SentencePiece tokenizer (Llama 2, Mistral) makes the lone leading space an extra
    "▁" token that never follows a prompt. Where the boundary merges into one token (the prefix's
    ids are not a prefix of the whole), the continuation is tokenised alone, as MEMIT does.
    """
    head = tok(prefix, add_special_tokens=False)["input_ids"]
    whole = tok(prefix + continuation, add_special_tokens=False)["input_ids"]
    if len(whole) > len(head) and whole[: len(head)] == head:
        return whole[len(head):]
    return tok(continuation, add_special_tokens=False)["input_ids"]


def context_limit(model) -> int | None:
    """The most positions the model can read (n_positions / max_position_embeddings), if it says."""
    config = getattr(model, "config", None)
    for name in ("n_positions", "max_position_embeddings"):
        limit = getattr(config, name, None)
        if isinstance(limit, int) and limit > 0:
            return limit
    return None


def quoted(text: str, width: int = 80) -> str:
    """repr(text) for an error message, cut after `width` characters (an over-long prompt is the usual case)."""
    return repr(text) if len(text) <= width else f"{text[:width]!r}... ({len(text)} characters)"


def check_tokenizer(tok, source: str = "the tokenizer") -> None:
    """Refuse tokenizers whose positions MEMIT cannot use, saying why (before any forward pass)."""
    probe = "The mother tongue of Danielle Darrieux is"
    bare = tok(probe, add_special_tokens=False)["input_ids"]
    if not bare:
        raise ValueError(f"{source} turns text into no tokens (is it a model directory without tokenizer files?)")
    full = tok(probe)["input_ids"]
    if full[len(full) - len(bare):] != bare:
        raise ValueError(f"{source} appends special tokens after the text ({tok.convert_ids_to_tokens(full[-1])!r}): "
                         "prompts would end in them, and the subject's and targets' positions would be off; "
                         "turn that off (e.g. add_eos_token=False)")
