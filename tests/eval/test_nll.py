"""target_nll against a hand computation: one unpadded forward pass per example, float64 throughout.

Definition (collabedit_secure/eval/nll.py, MEMIT's `test_batch_prediction`): with P = tok(prefix)
(special tokens as the tokenizer adds them, e.g. a Llama-style BOS) and T the tokens that follow P in
tok(prefix + " " + target) (for byte-level BPE exactly tok(" " + target); a SentencePiece tokenizer
would make that lone space an extra "▁" token), NLL = -(1/|T|) Σ_j log softmax(model(P + T))[|P| - 1 + j, T_j].
"""

from __future__ import annotations

import pytest
import torch

from collabedit_secure.eval.nll import target_nll
from tests.editing.conftest import make_sentencepiece_style_tokenizer, make_tokenizer, tiny_model

# Prefix lengths differ (so a batch is padded), targets span one to many tokens.
PREFIXES = [
    "The mother tongue of Danielle Darrieux is",
    "Paris is",
    "Toko Yasuda, which is located in",
    "The headquarters of Apple A5 is in",
    "Lyon plays the instrument",
]
TARGETS = ["French", "of", "Autonomous University of Madrid", "To", "piano"]


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def model_and_tok(request):
    """float64 models: GPT-2 with a byte-level BPE (no BOS), Llama with a BOS-adding tokenizer."""
    tok = make_tokenizer() if request.param == "gpt2" else make_sentencepiece_style_tokenizer()
    return tiny_model(request.param, tok, torch.float64), tok


def token_ids(tok, prefix: str, target: str) -> tuple[list[int], list[int]]:
    prefix_ids, whole = tok(prefix)["input_ids"], tok(prefix + " " + target)["input_ids"]
    assert whole[: len(prefix_ids)] == prefix_ids
    return prefix_ids, whole[len(prefix_ids):]


def hand_nll(model, tok, prefix: str, target: str) -> float:
    p, t = token_ids(tok, prefix, target)
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([p + t])).logits[0]
    assert logits.dtype == torch.float64
    logp = torch.log_softmax(logits, dim=-1)
    total = 0.0
    for j, token in enumerate(t):
        total += float(logp[len(p) - 1 + j, token])
    return -total / len(t)


def test_tokenisation_the_cases_rely_on(model_and_tok):
    model, tok = model_and_tok
    lengths = [len(token_ids(tok, p, t)[0]) for p, t in zip(PREFIXES, TARGETS)]
    assert len(set(lengths)) >= 3  # padding in a batch really happens, by different amounts
    if tok.bos_token_id is not None and tok("x")["input_ids"][0] == tok.bos_token_id:
        # Llama-style: the prefix starts with BOS, the target must not contain one, nor a lone "▁".
        assert all(tok.bos_token_id not in token_ids(tok, p, t)[1] for p, t in zip(PREFIXES, TARGETS))
        assert tok.convert_ids_to_tokens(tok(" French", add_special_tokens=False)["input_ids"])[0] == "▁"
        assert tok.convert_ids_to_tokens(token_ids(tok, PREFIXES[0], TARGETS[0])[1])[0] != "▁"
    else:
        assert len(token_ids(tok, PREFIXES[1], TARGETS[1])[1]) == 1  # " of": a single-token target
        assert tok.decode(token_ids(tok, PREFIXES[0], TARGETS[0])[1]) == " French"
    assert len(token_ids(tok, PREFIXES[2], TARGETS[2])[1]) >= 4


@pytest.mark.parametrize("index", [0, 1, 2], ids=["multi-token", "single-token", "long-target"])
def test_one_example_matches_hand_computation(model_and_tok, index):
    model, tok = model_and_tok
    got = target_nll(model, tok, [PREFIXES[index]], [TARGETS[index]])
    assert got.dtype == torch.float64 and got.shape == (1,)
    want = hand_nll(model, tok, PREFIXES[index], TARGETS[index])
    assert want > 0
    torch.testing.assert_close(got, torch.tensor([want], dtype=torch.float64), rtol=1e-6, atol=0)


@pytest.mark.parametrize("batch_size", [1, 2, 3, 64])
def test_padded_batches_match_hand_computation(model_and_tok, batch_size):
    """All examples in padded batches (one batch, or several with a short last one): same values, same order."""
    model, tok = model_and_tok
    want = torch.tensor([hand_nll(model, tok, p, t) for p, t in zip(PREFIXES, TARGETS)], dtype=torch.float64)
    assert len(set(want.tolist())) == len(want)  # distinct, so a permutation would show
    got = target_nll(model, tok, PREFIXES, TARGETS, batch_size=batch_size)
    assert got.dtype == torch.float64 and got.shape == (len(PREFIXES),)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=0)
    # Reversed order puts the longest sequence in a different batch position (other padding).
    got_rev = target_nll(model, tok, PREFIXES[::-1], TARGETS[::-1], batch_size=batch_size)
    torch.testing.assert_close(got_rev, want.flip(0), rtol=1e-6, atol=0)
