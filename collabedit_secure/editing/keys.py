"""Keys k (input of the edited projection at the subject's last token) and the current hidden z.

One forward pass per request over its context-templated prompts, so a request's key never depends
on which other requests share its batch: collaborative and global runs see bit-identical keys.
"""

from __future__ import annotations

import torch

from .adapters import ModelAdapter
from .hooks import trace, run_until_stop
from .requests import EditRequest
from .tokens import encode, subject_last_index


def _templated(request: EditRequest, templates: list[list[str]]) -> tuple[list[str], list[int]]:
    """Each context template applied to the prompt (a new template with the subject slot) and its group."""
    filled, groups = [], []
    for group_index, group in enumerate(templates):
        for template in group:
            filled.append(template.format(request.prompt))
            groups.append(group_index)
    return filled, groups


@torch.no_grad()
def request_keys(model, tok, adapter: ModelAdapter, request: EditRequest, layers: list[int],
                 templates: list[list[str]], z_layer: int) -> tuple[dict[int, torch.Tensor], torch.Tensor]:
    """Per layer: the two-level averaged key (d_in,); and the block-z_layer output at the bare prompt.

    The first template must be the bare "{}" (MEMIT's first context type): its row gives cur_z.
    """
    if templates[0] != ["{}"]:
        raise ValueError(f"the first context type must be ['{{}}'], got {templates[0]!r}")
    filled, groups = _templated(request, templates)
    device = next(model.parameters()).device
    batch = encode(tok, [t.format(request.subject) for t in filled], device)
    rows = torch.arange(len(filled))
    cols = torch.tensor([batch.absolute(i, subject_last_index(tok, t, request.subject)) for i, t in enumerate(filled)])
    rewrite_names = [adapter.rewrite_name(layer) for layer in layers]
    block_name = adapter.layer_name(z_layer)
    with trace(model, rewrite_names, "input") as inputs, trace(model, [block_name], "output", stop=True) as outputs:
        run_until_stop(model, **batch.model_inputs())
    group_ids = torch.tensor(groups)
    keys = {}
    for layer, name in zip(layers, rewrite_names):
        # (n_texts, seq, d_in); OPT flattens the tokens to (n_texts * seq, d_in) before its MLP.
        per_token = inputs[name].reshape(len(filled), -1, inputs[name].shape[-1])
        at_subject = per_token[rows, cols].double().cpu()  # (n_texts, d_in)
        per_group = [at_subject[group_ids == g].mean(0) for g in range(len(templates))]
        keys[layer] = torch.stack(per_group).mean(0)
    cur_z = outputs[block_name][0, cols[0]].double().cpu()
    return keys, cur_z


def compute_keys(model, tok, adapter: ModelAdapter, requests: list[EditRequest], layers: list[int],
                 templates: list[list[str]], z_layer: int) -> tuple[dict[int, torch.Tensor], torch.Tensor]:
    """K per layer (d_in x n, float64) and cur_z (hidden x n, float64) on the model as it stands."""
    per_request = [request_keys(model, tok, adapter, r, layers, templates, z_layer) for r in requests]
    keys = {layer: torch.stack([k[layer] for k, _ in per_request], dim=1) for layer in layers}
    cur_z = torch.stack([z for _, z in per_request], dim=1)
    return keys, cur_z
