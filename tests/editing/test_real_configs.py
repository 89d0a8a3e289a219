"""Real-model configurations, checked without their weights (issue 41, item 4).

For GPT-2 XL, GPT-J-6B, GPT-NeoX-20B, Llama-2-7B, Mistral-7B and Qwen2-7B the published config.json
values are written out below. Two checks per family:

* `test_published_layout`: the model at its published widths and depth, built on the meta device
  (shapes only: no memory, no weights, no time): every module the family's hparams address exists,
  and a party's statistics for each edited layer would be S_KK (d_in x d_in) and S_RK (d_out x d_in)
  with d_in the published MLP width and d_out the published hidden size. The shipped hparams must
  fit the published depth.
* `test_federation_round_equals_global`: one federation round in float64 on a random-weight model
  of the family at reduced depth (4 layers) and reduced width (`Family.small`): three parties,
  each calling `memit.edit` with an `exchange` as a party daemon does (party/engine.py), and a
  coordinator that sums their S_KK and S_RK and solves with `collabedit_merge`. The round's ΔW must
  equal global MEMIT's (all requests in one `edit`) to 1e-9, and applied, change only the edited weights.

Why reduced widths: at the published widths a float64 forward pass is seconds per prompt batch on
2 cores (Llama-2-7B at 3 layers, measured: 67 s to build, 16 s for the keys of two requests, 35 s
for three compute_z steps), and S_KK alone is 1 to 4.8 GB per layer (MLP 11008 to 24576 wide). So
the models are about 256 wide (192 to 320), keeping what each architecture is made of: the MLP's
expansion (intermediate / hidden, exactly), query heads per KV head (GQA), the rotary fraction of a
head, the head size where that still fits (see FAMILIES). Depth is 4 layers with layers 1-2 edited
(z at layer 2, the loss at the last layer, layers 0 and 3 left to check untouched). The vocabulary
is the tiny tokenizers' (about 300 tokens) in the reduced models, the published one on the meta device.
"""

from __future__ import annotations

import copy
import dataclasses
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pytest
import torch
import transformers

from collabedit_secure.editing import MemitHparams, ModelAdapter, edit
from collabedit_secure.editing.context import generate_context_templates
from collabedit_secure.editing.targets import TargetCache
from collabedit_secure.editing.tokens import context_limit
from collabedit_secure.merging.collabedit import collabedit_merge
from collabedit_secure.simulate import relative_errors

from .conftest import make_sentencepiece_style_tokenizer, make_tokenizer, random_c0, tiny_requests

TOL = 1e-9
DEPTH = 4  # reduced depth of the float64 round
EDITED = [1, 2]  # its edited layers
N_PARTIES, PER_PARTY = 3, 2

# ----------------------------------------------------------------------------- published configs
# Values as in each model's config.json on the Hugging Face hub (the keys are config.json's),
# written from those files as published (they cannot be fetched here: no network, no weights).

# openai-community/gpt2-xl: n_inner is null in config.json, i.e. 4 * n_embd = 6400.
GPT2_XL = dict(n_layer=48, n_embd=1600, n_head=25, n_inner=None, n_positions=1024, vocab_size=50257,
               activation_function="gelu_new", layer_norm_epsilon=1e-5)
# EleutherAI/gpt-j-6B: n_inner null (4 * 4096 = 16384); rotary on 64 of each head's 256 dimensions;
# an untied lm_head with a bias.
GPTJ_6B = dict(n_layer=28, n_embd=4096, n_head=16, rotary_dim=64, n_inner=None, n_positions=2048,
               vocab_size=50400, activation_function="gelu_new", layer_norm_epsilon=1e-5,
               tie_word_embeddings=False)
# EleutherAI/gpt-neox-20b: parallel attention + MLP residual, rotary on 25% of each head (96 wide).
GPT_NEOX_20B = dict(num_hidden_layers=44, hidden_size=6144, intermediate_size=24576, num_attention_heads=64,
                    rotary_pct=0.25, rotary_emb_base=10000, max_position_embeddings=2048, vocab_size=50432,
                    use_parallel_residual=True, hidden_act="gelu_fast", layer_norm_eps=1e-5,
                    tie_word_embeddings=False)
# meta-llama/Llama-2-7b-hf: multi-head attention (32 KV heads), SwiGLU MLP; rms_norm_eps 1e-5 as the
# hub's file now says (its first version said 1e-6).
LLAMA_2_7B = dict(num_hidden_layers=32, hidden_size=4096, intermediate_size=11008, num_attention_heads=32,
                  num_key_value_heads=32, max_position_embeddings=4096, rms_norm_eps=1e-5, vocab_size=32000,
                  hidden_act="silu", rope_theta=10000.0, tie_word_embeddings=False)
# mistralai/Mistral-7B-v0.1: grouped-query attention (8 KV heads for 32), a 4096-token sliding window.
MISTRAL_7B = dict(num_hidden_layers=32, hidden_size=4096, intermediate_size=14336, num_attention_heads=32,
                  num_key_value_heads=8, max_position_embeddings=32768, sliding_window=4096, rms_norm_eps=1e-5,
                  vocab_size=32000, hidden_act="silu", rope_theta=10000.0, tie_word_embeddings=False)
# Qwen/Qwen2-7B: 28 query heads on 4 KV heads, biases on q/k/v (built into the architecture), the
# sliding window off, rope_theta 1e6.
QWEN2_7B = dict(num_hidden_layers=28, hidden_size=3584, intermediate_size=18944, num_attention_heads=28,
                num_key_value_heads=4, max_position_embeddings=131072, rms_norm_eps=1e-6, vocab_size=152064,
                hidden_act="silu", rope_theta=1000000.0, sliding_window=131072, use_sliding_window=False,
                max_window_layers=28, tie_word_embeddings=False)

_TEMPLATE_FIELDS = ("rewrite_module_tmp", "layer_module_tmp", "mlp_module_tmp", "attn_module_tmp",
                    "ln_f_module", "lm_head_module")


@dataclass(frozen=True)
class Family:
    id: str
    config_class: type
    published: dict
    hidden: int  # d_out of the edited projection (published)
    mlp: int  # d_in: the published MLP width
    hparams: str | None  # the shipped hparams file for it; None: none is shipped
    small: dict  # the reduced model's widths (config keys), each derived in FAMILIES' comments
    sentencepiece: bool = False  # Llama-2 / Mistral tokenizer layout (BOS, "▁"); else byte-level BPE

    @property
    def depth_key(self) -> str:
        return "n_layer" if "n_layer" in self.published else "num_hidden_layers"

    def config(self, **changes):
        return self.config_class(**{**self.published, **changes})

    def reduced(self, tok):
        special = dict(bos_token_id=tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id,
                       eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
        return self.config(**{self.depth_key: DEPTH, "vocab_size": len(tok), **self.small, **special})

    def memit_hparams(self, n_layer: int) -> MemitHparams:
        """The shipped file (GPT-NeoX has none: GPT-J's algorithm settings with the adapter's module
        defaults, and the loss at the last layer as MEMIT puts it)."""
        if self.hparams is not None:
            return MemitHparams.builtin(self.hparams)
        return dataclasses.replace(MemitHparams.builtin("gpt-j-6b"), v_loss_layer=n_layer - 1,
                                   **dict.fromkeys(_TEMPLATE_FIELDS))


# The reduced widths keep what the architecture is made of: the MLP's expansion (intermediate /
# hidden, exactly), query heads per KV head, the rotary fraction of a head, the head size where
# that still leaves a model of about 256 wide (else the head is narrowed and the rest kept).
FAMILIES = [
    # 25 heads of 64 -> 5 heads of 64: n_embd 320, MLP 4 x 320 = 1280.
    Family("gpt2-xl", transformers.GPT2Config, GPT2_XL, 1600, 6400, "gpt2-xl", dict(n_embd=320, n_head=5)),
    # 16 heads of 256 with rotary on 64 -> 2 heads of 128 with rotary on 32: n_embd 256, MLP 1024.
    Family("gpt-j-6b", transformers.GPTJConfig, GPTJ_6B, 4096, 16384, "gpt-j-6b",
           dict(n_embd=256, n_head=2, rotary_dim=32)),
    # 64 heads of 96 -> 2 heads of 96 (rotary on 25% of each, as published): hidden 192, MLP 768.
    Family("gpt-neox-20b", transformers.GPTNeoXConfig, GPT_NEOX_20B, 6144, 24576, None,
           dict(hidden_size=192, intermediate_size=768, num_attention_heads=2)),
    # 32 heads of 128 -> 2 heads of 128: hidden 256, MLP 11008 / 16 = 688.
    Family("llama-2-7b", transformers.LlamaConfig, LLAMA_2_7B, 4096, 11008, "llama",
           dict(hidden_size=256, intermediate_size=688, num_attention_heads=2, num_key_value_heads=2),
           sentencepiece=True),
    # 32 query / 8 KV heads of 128 -> 4 / 1 of 64: hidden 256, MLP 3.5 x 256 = 896. The 4096-token
    # window would never close on prompts of ~25 tokens: 8 tokens makes keys and targets go through it.
    Family("mistral-7b", transformers.MistralConfig, MISTRAL_7B, 4096, 14336, "llama",
           dict(hidden_size=256, intermediate_size=896, num_attention_heads=4, num_key_value_heads=1,
                sliding_window=8), sentencepiece=True),
    # 28 query / 4 KV heads of 128 -> 7 / 1 of 32: hidden 224, MLP 18944 x 224 / 3584 = 1184.
    Family("qwen2-7b", transformers.Qwen2Config, QWEN2_7B, 3584, 18944, "qwen2-7b",
           dict(hidden_size=224, intermediate_size=1184, num_attention_heads=7, num_key_value_heads=1)),
]


def _heads(config) -> tuple[int, int, int]:
    """(query heads, KV heads, head size) of a config of any of the six families."""
    heads = getattr(config, "num_attention_heads", None) or config.n_head
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    return heads, kv_heads, config.hidden_size // heads


def tokenizer_for(family: Family):
    return make_sentencepiece_style_tokenizer() if family.sentencepiece else make_tokenizer()


def check_templates_resolve(model, adapter: ModelAdapter, layers: list[int]) -> None:
    """Every module the templates address, for every edited layer, exists (mlp and attn too)."""
    t = adapter.templates
    for layer in layers:
        for template in (t.rewrite, t.layer, t.mlp, t.attn):
            model.get_submodule(template.format(layer))
    for name in (t.ln_f, t.lm_head):
        model.get_submodule(name)


# ------------------------------------------------------------------------ published widths (meta)


@pytest.mark.parametrize("family", FAMILIES, ids=[f.id for f in FAMILIES])
def test_published_layout(family):
    config = family.config()
    n_layer = config.num_hidden_layers
    assert n_layer == family.published[family.depth_key] and config.hidden_size == family.hidden
    with torch.device("meta"):  # shapes only
        model = transformers.AutoModelForCausalLM.from_config(config)
    hp = family.memit_hparams(n_layer)
    hp.validate_for(n_layer, context_limit(model))  # the shipped layers and loss layer fit the published depth
    assert hp.v_loss_layer == n_layer - 1  # MEMIT's loss is at the last block
    adapter = ModelAdapter.from_model(model, hp)
    check_templates_resolve(model, adapter, hp.layers)
    head = model.get_submodule(adapter.templates.lm_head)
    assert tuple(head.weight.shape) == (family.published["vocab_size"], family.hidden)
    for layer in hp.layers:
        # ΔW is (d_out, d_in); S_KK = K Kᵀ with K (d_in, n) and S_RK = R Kᵀ with R (d_out, n).
        assert tuple(adapter.weight_out_in(model, layer).shape) == (family.hidden, family.mlp)
        assert adapter.key_dim(model, layer) == family.mlp


# -------------------------------------------------------------------- one federation round (float64)


class Coordinator:
    """What the coordinator does with a step's uploads: add them up, solve each layer, send ΔW back.

    The parties run in threads, each with its own model and tokenizer (a fast tokenizer's padding
    setting is shared state), and take turns on the CPU (`cpu`: one party computes at a time, so 2
    cores are not oversubscribed). Each party's `exchange` uploads, gives up its turn and waits until
    every party has uploaded for the step; the barrier's action then solves, once.
    """

    def __init__(self, n_parties: int, c0: dict[str, torch.Tensor], lambdas: dict[str, float]):
        self.c0, self.lambdas = c0, lambdas
        self.cpu = threading.Lock()
        self.uploads: dict[int, dict[int, tuple[torch.Tensor, torch.Tensor]]] = {}
        self.step: dict[int, str] = {}
        self.solved: dict[str, torch.Tensor] = {}
        self.received: list[dict[int, dict[int, tuple[torch.Tensor, torch.Tensor]]]] = []  # per step
        self.error: BaseException | None = None
        self.barrier = threading.Barrier(n_parties, action=self._solve, timeout=300)

    def _solve(self) -> None:
        try:
            self.received.append(dict(self.uploads))
            self.solved = {}
            for layer, name in self.step.items():
                s_kk = sum(upload[layer][0] for upload in self.uploads.values())
                s_rk = sum(upload[layer][1] for upload in self.uploads.values())
                self.solved[name] = collabedit_merge(self.c0[name], self.lambdas[name], s_kk, s_rk, layer=name)
            self.uploads = {}
        except BaseException as err:  # the barrier breaks; the test raises this, not BrokenBarrierError
            self.error = err
            raise

    def exchange_for(self, party: int):
        """The party's side, as party/engine.py's: its own contributions up, ΔW per module back."""

        def exchange(step: dict[int, str], per_party):
            (mine,) = per_party  # a party's edit holds only its own requests
            self.step = dict(step)
            self.uploads[party] = {layer: (c.s_kk, c.s_rk) for layer, c in mine.items()}
            self.cpu.release()
            try:
                self.barrier.wait()
            finally:
                self.cpu.acquire()
            return {name: (self.solved[name].clone(), None) for name in step.values()}

        return exchange


def run_federation(model, tok, parties, hp, c0, templates, schedule: str, target_cache: TargetCache):
    """Each party edits its own copy of the model through the coordinator; their EditResults, in order."""
    adapter = ModelAdapter.from_model(model, hp)
    names = [adapter.rewrite_name(layer) for layer in hp.layers]
    coordinator = Coordinator(len(parties), c0, dict(zip(names, hp.layer_lambdas())))
    copies = [(copy.deepcopy(model), copy.deepcopy(tok)) for _ in parties]

    def party(index: int):
        party_model, party_tok = copies[index]
        with coordinator.cpu:
            try:
                return edit(party_model, party_tok, [parties[index]], hp, c0, schedule=schedule,
                            templates=templates, exchange=coordinator.exchange_for(index),
                            target_cache=target_cache, keep_contributions=True)
            except BaseException:
                coordinator.barrier.abort()  # the others would wait for this party's uploads
                raise

    with ThreadPoolExecutor(len(parties)) as pool:
        futures = [pool.submit(party, i) for i in range(len(parties))]
    errors = [f.exception() for f in futures if f.exception() is not None]
    if coordinator.error is not None or errors:  # the cause, not the broken barrier it left behind
        raise coordinator.error or next((e for e in errors if not isinstance(e, threading.BrokenBarrierError)),
                                        errors[0])
    return [f.result() for f in futures], coordinator, [m for m, _ in copies]


def check_reduction(family: Family, config) -> None:
    """The reduced model keeps the published MLP expansion, query heads per KV head and rotary fraction."""
    published = family.config()
    heads, kv_heads, head_size = _heads(config)
    p_heads, p_kv_heads, p_head_size = _heads(published)
    assert heads * p_kv_heads == p_heads * kv_heads and heads * head_size == config.hidden_size
    if hasattr(config, "rotary_dim"):
        assert config.rotary_dim * p_head_size == published.rotary_dim * head_size
    if getattr(published, "rope_parameters", None) is not None:  # theta, partial rotary factor
        assert config.rope_parameters == published.rope_parameters


@pytest.mark.parametrize("family", FAMILIES, ids=[f.id for f in FAMILIES])
def test_federation_round_equals_global(family):
    tok = tokenizer_for(family)
    torch.manual_seed(0)
    config = family.reduced(tok)
    check_reduction(family, config)
    model = transformers.AutoModelForCausalLM.from_config(config).double().eval()
    # The family's hparams at 4 layers. ΔW's identity holds for any targets and templates, so for
    # time compute_z takes one Adam step (two passes) and the 5 context templates are 5 tokens long.
    hp = dataclasses.replace(family.memit_hparams(DEPTH), layers=EDITED, v_loss_layer=DEPTH - 1,
                             v_num_grad_steps=2, context_template_length_params=[[5, 5]])
    adapter = ModelAdapter.from_model(model, hp)
    check_templates_resolve(model, adapter, hp.layers)
    d_out, d_in = config.hidden_size, adapter.key_dim(model, EDITED[0])
    assert d_in * family.hidden == family.mlp * d_out  # the published MLP expansion, exactly
    c0 = {adapter.rewrite_name(layer): random_c0(d_in, seed=layer) for layer in EDITED}
    templates = generate_context_templates(model, tok, hp.context_template_seed, hp.context_template_length_params)
    requests = tiny_requests(N_PARTIES * PER_PARTY)
    parties = [requests[i * PER_PARTY:(i + 1) * PER_PARTY] for i in range(N_PARTIES)]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    # Each party optimises its own targets; global editing reuses them (compute_z is per request,
    # on the unedited weights, the same function either way), as tests/editing/test_invariants.py does.
    targets = TargetCache()

    results, coordinator, copies = run_federation(model, tok, parties, hp, c0, templates, "sequential", targets)
    # 1. the parties' statistics: one step per layer (sequential), every party uploading that layer's sums
    assert len(targets) == len(requests)
    assert [sorted(step) for step in coordinator.received] == [list(range(N_PARTIES))] * len(EDITED)
    for step, layer in zip(coordinator.received, EDITED):
        for party, upload in step.items():
            s_kk, s_rk = upload[layer]
            assert tuple(s_kk.shape) == (d_in, d_in) and tuple(s_rk.shape) == (d_out, d_in)
            assert s_kk.dtype == s_rk.dtype == torch.float64
            assert torch.allclose(s_kk, s_kk.T, rtol=0, atol=1e-12 * float(s_kk.abs().max()))
            assert s_kk.abs().max() > 0 and s_rk.abs().max() > 0
            own = results[party].contributions[0][layer]  # what the party computed is what it sent
            assert torch.equal(own.s_kk, s_kk) and torch.equal(own.s_rk, s_rk)
    # 2. the round == global MEMIT (all requests in one edit, summed and solved in-process)
    everyone = edit(model, tok, [requests], hp, c0, schedule="sequential", templates=templates, target_cache=targets)
    assert targets.hits == len(requests)
    want = everyone.delta.weights
    assert set(want) == {adapter.rewrite_name(layer) for layer in EDITED}
    assert all(w.abs().max() > 0 for w in want.values())
    for result in results:
        error = relative_errors([result.delta.weights], [want])[0]
        assert error <= TOL, f"{family.id}: federated vs global ΔW {error:.2e}"
    # 3. applied, ΔW changes the edited weights and nothing else
    for party_model in copies:  # edit() hands every party's model back unchanged
        assert all(torch.equal(v, before[k]) for k, v in party_model.state_dict().items())
    party_model = copies[0]
    results[0].delta.apply(party_model)
    edited = {f"{adapter.rewrite_name(layer)}.weight" for layer in EDITED}
    for key, value in party_model.state_dict().items():
        if key in edited:
            assert not torch.equal(value, before[key]), key
        else:
            assert torch.equal(value, before[key]), key
    for layer in EDITED:
        name = adapter.rewrite_name(layer)
        base = before[f"{name}.weight"]
        base = base.T if adapter.is_transposed(adapter.rewrite_module(party_model, layer)) else base
        assert torch.allclose(adapter.weight_out_in(party_model, layer), base + results[0].delta.weights[name],
                              rtol=0, atol=1e-12)
