"""Where MEMIT's pieces live in each model family, chosen from `config.model_type`.

The edited weight is the MLP's output projection (d_out = hidden size, d_in = MLP width). GPT-2
stores it as a Conv1D of shape (in, out), so an update computed as (out, in) is transposed on apply.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

import torch

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModuleTemplates:
    """What each template addresses; "{}" is the layer index.

    MEMIT reads four of them: `rewrite` (the edited MLP output projection), `layer` (the block whose
    output is the residual stream), `ln_f` and `lm_head`. `mlp` and `attn` are MEMIT-file fields
    that no computation here reads; a family without such a module (OPT keeps fc1/fc2 directly in
    its block) has None, and one given in hparams is still checked against the model.
    """

    rewrite: str
    layer: str
    mlp: str | None
    attn: str | None
    ln_f: str
    lm_head: str  # unembedding: weight (vocab x hidden) and optional bias


USED_TEMPLATES = ("rewrite", "layer", "ln_f", "lm_head")
HPARAMS_FIELD = {"rewrite": "rewrite_module_tmp", "layer": "layer_module_tmp", "mlp": "mlp_module_tmp",
                 "attn": "attn_module_tmp", "ln_f": "ln_f_module", "lm_head": "lm_head_module"}


def _templates(prefix: str, rewrite: str, mlp: str | None, attn: str, ln_f: str, lm_head: str) -> ModuleTemplates:
    """A family whose blocks are `{prefix}.{}`; `rewrite`, `mlp` and `attn` are inside a block."""
    block = prefix + ".{}"
    return ModuleTemplates(f"{block}.{rewrite}", block, mlp and f"{block}.{mlp}", f"{block}.{attn}", ln_f, lm_head)


_GPT2 = _templates("transformer.h", "mlp.c_proj", "mlp", "attn", "transformer.ln_f", "transformer.wte")
_GPTJ = _templates("transformer.h", "mlp.fc_out", "mlp", "attn", "transformer.ln_f", "lm_head")
_NEOX = _templates("gpt_neox.layers", "mlp.dense_4h_to_h", "mlp", "attention", "gpt_neox.final_layer_norm",
                   "embed_out")
_LLAMA_LIKE = _templates("model.layers", "mlp.down_proj", "mlp", "self_attn", "model.norm", "lm_head")
# OPT: no `mlp` module; the MLP is fc1/fc2 of the block itself, fc2 its output projection.
_OPT = _templates("model.decoder.layers", "fc2", None, "self_attn", "model.decoder.final_layer_norm", "lm_head")
_FALCON_BLOOM = _templates("transformer.h", "mlp.dense_4h_to_h", "mlp", "self_attention", "transformer.ln_f",
                           "lm_head")
# StarCoder's layout is GPT-2's, but with nn.Linear (out, in) weights and an untied lm_head.
_BIGCODE = _templates("transformer.h", "mlp.c_proj", "mlp", "attn", "transformer.ln_f", "lm_head")

# Every family here runs `collabedit stats`, `edit` and `eval` in tests/test_cli_families.py.
FAMILIES: dict[str, ModuleTemplates] = {
    "gpt2": _GPT2,
    "gptj": _GPTJ,
    "gpt_neox": _NEOX,
    "llama": _LLAMA_LIKE,
    "mistral": _LLAMA_LIKE,
    "qwen2": _LLAMA_LIKE,
    "gemma": _LLAMA_LIKE,
    "phi3": _LLAMA_LIKE,
    "opt": _OPT,
    "falcon": _FALCON_BLOOM,
    "bloom": _FALCON_BLOOM,
    "gpt_bigcode": _BIGCODE,
}


class UnsupportedModelError(ValueError):
    """The model family has no known MEMIT module layout."""


def _check_layout(config) -> None:
    """Variants of a family whose unembedding is not ln_f then lm_head, which compute_z's loss assumes."""
    if config.model_type == "opt":
        if not config.do_layer_norm_before or config.word_embed_proj_dim != config.hidden_size:
            raise UnsupportedModelError(
                "OPT with do_layer_norm_before false or word_embed_proj_dim != hidden_size (OPT-350m's "
                "layout: a project_out between the last block and lm_head) is not supported")


def block_hidden(output) -> torch.Tensor:
    """The hidden state a transformer block returns: a bare tensor, or the first item of a tuple."""
    return output[0] if isinstance(output, (tuple, list)) else output


def get_module(model: torch.nn.Module, name: str) -> torch.nn.Module:
    try:
        return model.get_submodule(name)
    except AttributeError as err:
        raise UnsupportedModelError(f"model has no module {name!r} ({type(model).__name__})") from err


@dataclass(frozen=True)
class ModelAdapter:
    family: str
    n_layer: int
    hidden_size: int
    templates: ModuleTemplates

    @classmethod
    def from_config(cls, config, overrides: dict[str, str] | None = None) -> "ModelAdapter":
        """Family defaults, with any template given in `overrides` (field name -> template) replacing them."""
        family = getattr(config, "model_type", None)
        overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
        if family in FAMILIES:
            templates = replace(FAMILIES[family], **overrides)
        elif set(USED_TEMPLATES) <= set(overrides):
            templates = ModuleTemplates(**{"mlp": None, "attn": None, **overrides})
        else:
            raise UnsupportedModelError(
                f"unknown model family {family!r}; supported: {', '.join(sorted(FAMILIES))} (or give the "
                f"module templates MEMIT reads in the hparams: {', '.join(HPARAMS_FIELD[t] for t in USED_TEMPLATES)})"
            )
        _check_layout(config)
        return cls(family, int(config.num_hidden_layers), int(config.hidden_size), templates)

    @classmethod
    def from_model(cls, model: torch.nn.Module, hparams=None) -> "ModelAdapter":
        overrides = hparams.module_overrides() if hparams is not None else None
        adapter = cls.from_config(model.config, overrides)
        adapter = adapter._resolve_lm_head(model, explicit=bool(overrides and overrides.get("lm_head")))
        adapter.check(model)
        return adapter

    def _resolve_lm_head(self, model, explicit: bool = False) -> "ModelAdapter":
        """Module names move between transformers versions (GPT-NeoX `embed_out` is `lm_head` in 5.x):
        fall back to the model's own output embeddings when the template does not resolve, and say so
        when the name came from the hparams (a typo there should not pass unseen)."""
        try:
            model.get_submodule(self.templates.lm_head)
            return self
        except AttributeError:
            head = model.get_output_embeddings()
            name = next((n for n, m in model.named_modules() if m is head), None)
            if name is None:
                return self
            if explicit:
                log.warning("hparams lm_head_module %r is not in this model; using its output embeddings %r",
                            self.templates.lm_head, name)
            return replace(self, templates=replace(self.templates, lm_head=name))

    def check(self, model: torch.nn.Module) -> None:
        """Every template must resolve on this model (fail early, naming the module and its hparams field),
        those no computation reads (mlp, attn) too where they are given: a typo should not pass unseen."""
        for template, pattern in vars(self.templates).items():
            if pattern is None:
                continue
            name = pattern.format(self.n_layer - 1 if template == "layer" else 0)
            field = HPARAMS_FIELD[template]
            try:
                get_module(model, name)
            except UnsupportedModelError as err:
                raise UnsupportedModelError(f"{err}: check the hparams' {field} (or leave it out for the "
                                            f"{self.family} default)") from None

    def rewrite_name(self, layer: int) -> str:
        return self.templates.rewrite.format(layer)

    def layer_name(self, layer: int) -> str:
        return self.templates.layer.format(layer)

    def rewrite_module(self, model, layer: int) -> torch.nn.Module:
        return get_module(model, self.rewrite_name(layer))

    @staticmethod
    def is_transposed(module: torch.nn.Module) -> bool:
        """Conv1D (GPT-2) keeps its weight as (in, out); nn.Linear keeps (out, in)."""
        return type(module).__name__ == "Conv1D"

    def weight_out_in(self, model, layer: int) -> torch.Tensor:
        """The edited weight as (d_out, d_in), a view into the model."""
        module = self.rewrite_module(model, layer)
        return module.weight.T if self.is_transposed(module) else module.weight

    def key_dim(self, model, layer: int) -> int:
        return self.weight_out_in(model, layer).shape[1]

    def unembed(self, model, hidden: torch.Tensor) -> torch.Tensor:
        """Logits from a residual-stream state: ln_f, then the unembedding (weight^T + bias)."""
        normed = get_module(model, self.templates.ln_f)(hidden)
        head = get_module(model, self.templates.lm_head)
        logits = normed @ head.weight.T
        bias = getattr(head, "bias", None)
        return logits + bias if bias is not None else logits
