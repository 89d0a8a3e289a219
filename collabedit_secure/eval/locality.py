"""Where does an edit act? Efficacy with ΔW applied at chosen token positions of each rewrite prompt.

MEMIT writes ΔW into MLP weights, so the update fires at every token whose key overlaps the edited
keys, not only at the subject's last token it was solved for. Applying ΔW through forward hooks at
some positions only separates the two effects:

    all           ΔW everywhere (what the edited model does)
    subject       ΔW only at the subject's last token: the edit as the solve intended it
    off_subject   ΔW everywhere except there: the spill-over onto the prompt's other tokens
    none          the unedited model

If `subject` succeeds where `all` fails, the edit reached its target and was undone by its own
spill-over (on small models this, not the solve, limits efficacy at a few hundred edits).

`target_attainment` asks the step before: how much of the requested shift z - z_before the edited
model actually makes at the subject's last token (`subject_states` measures z on a model).
"""

from __future__ import annotations

from contextlib import contextmanager

import torch

from ..editing.adapters import ModelAdapter, get_module
from ..editing.delta import EditDelta
from ..editing.hparams import MemitHparams
from ..editing.keys import compute_keys
from ..editing.requests import EditRequest
from ..editing.tokens import subject_last_index
from .nll import target_nll

MODES = ("all", "subject", "off_subject", "none")


def _keep(mode: str, length: int, position: int) -> torch.Tensor:
    """Boolean mask over sequence positions where ΔW is applied."""
    keep = torch.zeros(length, dtype=torch.bool)
    if mode == "all":
        keep[:] = True
    elif mode == "subject":
        keep[position] = True
    elif mode == "off_subject":
        keep[:] = True
        keep[position] = False
    return keep


@contextmanager
def delta_at_positions(model, delta: EditDelta, mode: str, position: int):
    """Inside the block, every edited module adds x·ΔWᵀ at the positions `mode` selects.

    The model's weights are not touched (it must be the unedited model the delta was made on).
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    handles = []

    def make_hook(update: torch.Tensor):
        def hook(module, inputs, output):
            x = inputs[0]
            keep = _keep(mode, x.shape[1], position).to(x.device)
            return output + (x @ update.to(x.dtype).T) * keep[None, :, None]
        return hook

    try:
        for name, update in delta.weights.items():
            handles.append(get_module(model, name).register_forward_hook(make_hook(update.to(model.device))))
        yield
    finally:
        for handle in handles:
            handle.remove()


@torch.no_grad()
def efficacy_by_position(model, tok, delta: EditDelta, records: list[dict],
                         modes: tuple[str, ...] = MODES) -> dict[str, float]:
    """Efficacy (% of rewrite prompts with P(new) > P(true)) per mode, on CounterFact-schema records."""
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        raise ValueError(f"unknown mode(s) {unknown}; choose from {MODES}")
    if not records:
        raise ValueError("efficacy_by_position needs at least one record")
    hits = {mode: 0 for mode in modes}
    for record in records:
        rewrite = record["requested_rewrite"]
        prompt = rewrite["prompt"].format(rewrite["subject"])
        position = subject_last_index(tok, rewrite["prompt"], rewrite["subject"])
        targets = [rewrite["target_new"]["str"], rewrite["target_true"]["str"]]
        for mode in modes:
            with delta_at_positions(model, delta, mode, position):
                nll = target_nll(model, tok, [prompt, prompt], targets)
            hits[mode] += int(nll[0] < nll[1])
    return {mode: 100.0 * count / len(records) for mode, count in hits.items()}


@torch.no_grad()
def subject_states(model, tok, requests: list[EditRequest], hparams: MemitHparams) -> torch.Tensor:
    """Block z_layer's output at the subject's last token of each bare prompt (hidden x n, float64):
    the z that MEMIT's residuals are measured from."""
    adapter = ModelAdapter.from_model(model, hparams)
    _, states = compute_keys(model, tok, adapter, requests, hparams.layers[:1], [["{}"]], hparams.z_layer)
    return states


def target_attainment(z_target: torch.Tensor, z_before: torch.Tensor, z_after: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per column, the achieved shift z_after - z_before against the requested z_target - z_before.

    fraction    its component along the request, over the request's length (1 reached, 0 unmoved);
    orthogonal  the length of the rest, over the request's length (change in unrequested directions).
    """
    if not z_target.shape == z_before.shape == z_after.shape or z_target.dim() != 2:
        raise ValueError(f"z_target, z_before and z_after must be equal (hidden x n) matrices, got "
                         f"{tuple(z_target.shape)}, {tuple(z_before.shape)}, {tuple(z_after.shape)}")
    wanted = (z_target - z_before).double()
    got = (z_after - z_before).double()
    length = wanted.norm(dim=0)
    if not torch.all(length > 0):
        zero = torch.nonzero(length == 0).flatten().tolist()
        raise ValueError(f"requested shift is zero for column(s) {zero}: nothing to attain")
    fraction = (got * wanted).sum(0) / length**2
    orthogonal = (got - fraction * wanted).norm(dim=0) / length
    return {"fraction": fraction, "orthogonal": orthogonal}
