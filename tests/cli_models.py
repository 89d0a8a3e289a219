"""A tiny GPT-2 model directory, a corpus and hparams for editing-command tests (seconds, not minutes)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from tests.editing.conftest import corpus, make_tokenizer, tiny_model

HPARAMS = ("layers: [0, 1]\nv_loss_layer: 3\nv_num_grad_steps: {steps}\nv_early_stop_loss: {stop}\n"
           "clamp_norm_factor: 4\nv_lr: 1\nmom2_update_weight: 50\ncontext_template_length_params: [[4, 5]]\n")
REQUESTS = [
    {"case_id": 1, "prompt": "The mother tongue of {} is", "subject": "Lyon", "target_new": "English",
     "target_true": "French"},
    {"case_id": 2, "prompt": "{} plays the instrument", "subject": "Paris", "target_new": "guitar",
     "target_true": "piano"},
]


def write_model(folder: Path, seed: int = 0) -> Path:
    tok = make_tokenizer()
    tiny_model("gpt2", tok, torch.float32, seed=seed).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def write_inputs(folder: Path, steps: int = 6, stop: float = 0.05, requests=REQUESTS) -> dict[str, Path]:
    """base model, corpus, hparams and a plain request list in `folder`, by name."""
    files = {"model": write_model(folder / "base"), "corpus": folder / "corpus.txt",
             "hparams": folder / "hparams.yaml", "requests": folder / "requests.json"}
    files["corpus"].write_text("\n".join(corpus()[:48]))  # three C0 batches a layer
    files["hparams"].write_text(HPARAMS.format(steps=steps, stop=stop))
    files["requests"].write_text(json.dumps(requests))
    return files


def edit_argv(files: dict[str, Path], out: Path) -> list[str]:
    return ["edit", "--model", str(files["model"]), "--requests", str(files["requests"]), "--hparams",
            str(files["hparams"]), "--corpus", str(files["corpus"]), "--out", str(out)]
