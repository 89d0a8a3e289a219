"""A tiny trace utility: read a module's input or output, or rewrite a block's output.

Hooks are registered `with_kwargs=True` so a module called as `m(hidden_states=x)` still shows its
input. Block outputs may be a tensor or a tuple whose first item is the hidden state.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable

import torch

from .adapters import block_hidden, get_module


class StopForward(Exception):
    """Raised from a hook to end a forward pass once the traced layer has run."""


def _first_tensor(args, kwargs) -> torch.Tensor:
    if args:
        return args[0]
    for value in kwargs.values():
        if isinstance(value, torch.Tensor):
            return value
    raise RuntimeError("traced module was called without a tensor input")


@contextmanager
def trace(model, names: list[str], what: str = "output", stop: bool = False):
    """Yields {name: tensor}: each module's input or (hidden) output from the forward passes inside."""
    if what not in ("input", "output"):
        raise ValueError(f"what must be 'input' or 'output', got {what!r}")
    seen: dict[str, torch.Tensor] = {}
    last = names[-1]

    def make_hook(name):
        def hook(module, args, kwargs, output):
            seen[name] = _first_tensor(args, kwargs) if what == "input" else block_hidden(output)
            if stop and name == last:
                raise StopForward
        return hook

    handles = [get_module(model, n).register_forward_hook(make_hook(n), with_kwargs=True) for n in names]
    try:
        yield seen
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def edit_output(model, name: str, edit: Callable[[torch.Tensor], torch.Tensor]):
    """Replace a block's hidden output by edit(hidden), keeping the tuple shape if there is one."""

    def hook(module, args, kwargs, output):
        if isinstance(output, (tuple, list)):
            return (edit(output[0]), *output[1:])
        return edit(output)

    handle = get_module(model, name).register_forward_hook(hook, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()


@contextmanager
def replay_outputs(model, names: list[str]):
    """Each named module runs once; the forward passes after that get its first output back.

    For blocks whose inputs and weights are the same in every pass (in compute_z, the blocks up to
    the one whose output is optimised): the passes compute what they would have, bit for bit, in
    half the time. The hooks on a module still run on the replayed output.
    """
    modules = [get_module(model, name) for name in names]
    own = [module.__dict__.get("forward") for module in modules]  # e.g. an accelerate wrapper

    def replaying(run):
        first = []

        def forward(*args, **kwargs):
            if not first:
                first.append(run(*args, **kwargs))
            return first[0]
        return forward

    for module in modules:
        module.forward = replaying(module.forward)
    try:
        yield
    finally:
        for module, forward in zip(modules, own):
            if forward is None:
                del module.forward
            else:
                module.forward = forward


def run_until_stop(model, **inputs):
    """model(**inputs), ended early (returning None) when a trace with stop=True fires."""
    try:
        return model(**inputs)
    except StopForward:
        return None
