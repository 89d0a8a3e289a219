"""Target hidden states z (MEMIT `compute_z`): the residual-stream value at layer z_layer, subject's
last token, that makes the model say target_new.

A vector delta is added to block z_layer's output at the subject's last token of every prompt and
optimised (Adam) for NLL(target) + kl_factor * KL(P_cur || P_init) + weight decay, with delta kept in
a ball of radius clamp_norm_factor * ||z_init||, until the loss is below v_early_stop_loss or
v_num_grad_steps passes have run. Returns z = z_init + delta.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ..progress import progress
from .adapters import ModelAdapter
from .fingerprint import weights_digest
from .hooks import edit_output, replay_outputs, trace
from .hparams import MemitHparams
from .requests import EditRequest, RequestError
from .tokens import context_limit, continuation_ids, encode_ids, quoted, subject_last_index

KL_PROMPT = "{} is a"

log = logging.getLogger(__name__)


@dataclass
class TargetResult:
    z: torch.Tensor  # (hidden,) float64
    z_init: torch.Tensor
    losses: list[float] = field(default_factory=list)
    # MEMIT's "avg prob of [target_new]": exp(-mean NLL per target token), averaged over the rewriting
    # prompts, on the unedited model (first step) and with the returned z (last step).
    prob_before: float = float("nan")
    prob_after: float = float("nan")


@contextmanager
def frozen(model):
    """No parameter gradients while optimising delta; restores train mode and flags after."""
    flags = [p.requires_grad for p in model.parameters()]
    was_training = model.training
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in zip(model.parameters(), flags):
            p.requires_grad_(flag)
        model.train(was_training)


def _prompts(request: EditRequest, templates) -> list[str]:
    """Rewriting prompts (each context template around the prompt), then the KL prompt; "{}" is the subject."""
    return [c.format(request.prompt) for group in templates for c in group] + [KL_PROMPT]


def _rows(tok, request: EditRequest, templated: list[str], target_ids: list[int]) -> list[list[int]]:
    """Token ids: each rewriting prompt followed by all target tokens but the last, then the KL prompt.

    The target is appended as ids, not as decoded text: a SentencePiece decode drops the first
    piece's "▁", and re-tokenising "...isEnglish" would train the model on other tokens.
    """
    rows = [tok(t.format(request.subject))["input_ids"] for t in templated]
    return [row + target_ids[:-1] for row in rows[:-1]] + rows[-1:]


def _labels(batch, n_rewriting: int, target_ids: list[int]) -> torch.Tensor:
    """Target ids at the last len(target) positions of each rewriting prompt; -100 elsewhere.

    The logit at position p is scored against labels[p], i.e. the token at p + 1.
    """
    labels = torch.full((n_rewriting, batch.input_ids.shape[1]), -100, dtype=torch.long)
    for row in range(n_rewriting):
        end = int(batch.starts[row] + batch.lengths[row])
        labels[row, end - len(target_ids): end] = torch.tensor(target_ids)
    return labels.to(batch.input_ids.device)


def compute_z(model, tok, adapter: ModelAdapter, hp: MemitHparams, request: EditRequest,
              templates: list[list[str]]) -> TargetResult:
    device = next(model.parameters()).device
    # delta and Adam's state in at least float32 (as MEMIT): bfloat16 steps would round away
    dtype = torch.promote_types(next(model.parameters()).dtype, torch.float32)
    target_ids = continuation_ids(tok, request.text(), request.target_new)
    if not target_ids:
        raise ValueError(f"edit request {request.case_id!r}: target_new tokenises to nothing")
    templated = _prompts(request, templates)
    batch = encode_ids(tok, _rows(tok, request, templated, target_ids), device)
    n_rw = len(templated) - 1
    rows = torch.arange(len(templated), device=device)
    lookup = torch.tensor([batch.absolute(i, subject_last_index(tok, t, request.subject))
                           for i, t in enumerate(templated)], device=device)
    labels = _labels(batch, n_rw, target_ids)
    z_name, loss_name = adapter.layer_name(hp.z_layer), adapter.layer_name(hp.loss_layer)

    delta = torch.zeros(adapter.hidden_size, dtype=dtype, device=device, requires_grad=True)
    optimizer = torch.optim.Adam([delta], lr=hp.v_lr)
    state: dict[str, torch.Tensor] = {}

    def add_delta(hidden: torch.Tensor) -> torch.Tensor:
        if "z_init" not in state:  # first pass: delta is zero, this is the unedited value
            state["z_init"] = hidden[0, lookup[0]].detach().clone()
        hidden = hidden.clone()
        hidden[rows, lookup] = (hidden[rows, lookup] + delta).to(hidden.dtype)
        return hidden

    losses, probs = [], []
    # Blocks up to z_layer see the same inputs in every step: run once, replayed after.
    constant = [adapter.layer_name(layer) for layer in range(hp.z_layer + 1)]
    with frozen(model), torch.enable_grad(), replay_outputs(model, constant):
        for step in range(hp.v_num_grad_steps):
            optimizer.zero_grad()
            with edit_output(model, z_name, add_delta), trace(model, [loss_name], "output") as seen:
                logits = model(**batch.model_inputs(), use_cache=False).logits
            # NLL from block loss_layer through ln_f and the unembedding (MEMIT's loss path).
            logp = torch.log_softmax(adapter.unembed(model, seen[loss_name][:n_rw]), dim=-1)
            mask = labels != -100
            token_logp = logp.gather(2, labels.clamp(min=0).unsqueeze(2)).squeeze(2)
            nll_each = -(token_logp * mask).sum(1) / len(target_ids)
            nll = nll_each.mean()
            # KL at the subject's last token of "{} is a", against the first pass.
            kl_logp = torch.log_softmax(logits[n_rw:][torch.arange(1), lookup[n_rw:]], dim=-1)
            if "kl_init" not in state:
                state["kl_init"] = kl_logp.detach().clone()
            kl = hp.kl_factor * F.kl_div(state["kl_init"], kl_logp, log_target=True, reduction="batchmean")
            z_init = state["z_init"]
            weight_decay = hp.v_weight_decay * (delta.norm() / z_init.norm() ** 2)
            loss = nll + kl + weight_decay
            losses.append(loss.item())
            probs.append(torch.exp(-nll_each.detach()).mean().item())
            log.debug("  step %d: loss %.4f = nll %.4f + kl %.4f + weight decay %.4f, p(target) %.4f",
                      step, loss.item(), nll.item(), kl.item(), weight_decay.item(), probs[-1])
            if loss.item() < hp.v_early_stop_loss or step == hp.v_num_grad_steps - 1:
                break
            loss.backward()
            optimizer.step()
            radius = hp.clamp_norm_factor * z_init.norm()
            with torch.no_grad():
                if delta.norm() > radius:
                    delta.mul_(radius / delta.norm())
    z_init = state["z_init"].double().cpu()
    # The loop ends before an optimizer step, so the last loss and probability are those of the returned z.
    return TargetResult(z=z_init + delta.detach().double().cpu(), z_init=z_init, losses=losses,
                        prob_before=probs[0], prob_after=probs[-1])


def check_prompts_fit(model, tok, requests, templates: list[list[str]]) -> None:
    """Every compute_z prompt (context template + prompt + target) must fit the model's positions.

    Checked for all requests before the first is optimised: past its context a learned-position model
    indexes off its embedding table (an IndexError minutes into an edit), and a cut prompt would edit
    another fact.
    """
    limit = context_limit(model)
    if limit is None:
        return
    for request in requests:
        target_ids = continuation_ids(tok, request.text(), request.target_new)
        templated = _prompts(request, templates)
        for length in map(len, _rows(tok, request, templated, target_ids)[:-1]):
            if length > limit:
                raise RequestError(
                    f"edit request {request.case_id!r}: prompt {quoted(request.text())} with a context template "
                    f"and its target is {length} tokens, more than the model's context of {limit} tokens")


class TargetCache:
    """z per (exact model weights, request, context templates, hparams): compute_z is deterministic.

    Methods compared from the same base model (global, CollabEdit's parties, the local edits that
    Task Arithmetic, SA and TIES merge) ask for the same targets; each is optimised once.
    """

    def __init__(self) -> None:
        self._z: dict[str, tuple[torch.Tensor, float]] = {}  # key -> (z, seconds it took)
        self.hits = 0
        self.reused_s = 0.0  # compute time that hits saved (so reports can still charge it)

    @staticmethod
    def context(model, hp: MemitHparams, templates: list[list[str]]) -> str:
        """What every target of one compute_targets call shares: weights, templates, hparams."""
        described = json.dumps([templates, hp.to_dict()], sort_keys=True, default=str)
        return weights_digest(model) + hashlib.sha256(described.encode()).hexdigest()

    @staticmethod
    def _key(context: str, request: EditRequest) -> str:
        described = json.dumps([request.prompt, request.subject, request.target_new])
        return context + hashlib.sha256(described.encode()).hexdigest()

    def get(self, context: str, request: EditRequest) -> torch.Tensor | None:
        entry = self._z.get(self._key(context, request))
        if entry is None:
            return None
        self.hits += 1
        self.reused_s += entry[1]
        return entry[0]

    def put(self, context: str, request: EditRequest, z: torch.Tensor, seconds: float) -> None:
        self._z[self._key(context, request)] = (z.detach().clone(), seconds)

    def __len__(self) -> int:
        return len(self._z)


def compute_targets(model, tok, adapter, hp, requests, templates, cache: TargetCache | None = None) -> torch.Tensor:
    """Z (hidden x n, float64), one column per request, each optimised independently."""
    context = TargetCache.context(model, hp, templates) if cache is not None else ""
    columns = []
    # The slow part of an edit (seconds per request on a CPU): a bar on terminals, silent in logs.
    for number, request in enumerate(progress(requests, desc="compute_z", unit="request", leave=False), 1):
        z = cache.get(context, request) if cache is not None else None
        where = f"compute_z {number}/{len(requests)} {request.case_id!r} ({request.subject} ->{request.target_new})"
        if z is None:
            started = time.perf_counter()
            result = compute_z(model, tok, adapter, hp, request, templates)
            z, elapsed = result.z, time.perf_counter() - started
            if cache is not None:
                cache.put(context, request, z, elapsed)
            log.info("%s: p(target) %.4f -> %.4f, loss %.4f after %d step(s), %.1fs", where,
                     result.prob_before, result.prob_after, result.losses[-1], len(result.losses), elapsed)
        else:
            log.info("%s: reused the target computed earlier for these weights", where)
        columns.append(z)
    return torch.stack(columns, dim=1)
