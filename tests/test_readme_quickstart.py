"""README's "Edit your own model": its three commands and its Python block, exactly as printed there,
on a local HF directory (a tiny 8-layer GPT-2), and the two give the same edited model."""

from __future__ import annotations

import contextlib
import io
import json
import re
import shlex
from pathlib import Path

import torch
import transformers
from safetensors.torch import load_file

from collabedit_secure.cli import main
from tests.editing.conftest import corpus, make_tokenizer, tiny_config

README = Path(__file__).resolve().parents[1] / "README.md"
HPARAMS = ("base: gpt2-xl\nlayers: [4, 5, 6]\nv_loss_layer: 7\nv_num_grad_steps: 3\n"
           "context_template_length_params: [[4, 5]]\n")


def quickstart() -> tuple[list[str], str, list]:
    """The section's command lines, its Python block and the request list its text shows."""
    section = README.read_text().split("## Edit your own model\n", 1)[1].split("\n## ", 1)[0]
    commands = [line.strip() for line in section.splitlines() if line.startswith("    collabedit ")]
    python = section.split("```python\n", 1)[1].split("```", 1)[0]
    requests = json.loads(re.search(r"requests \(`(\[.*?\])`\)", section.replace("\n", " "))[1])
    return commands, python, requests


def prepare(folder: Path, requests: list) -> None:
    """What the README asks the reader to have: my-model, corpus.txt, hparams.yaml, requests.json."""
    tok = make_tokenizer()
    config = tiny_config("gpt2", len(tok))
    config.n_layer, config.initializer_range = 8, 0.2  # layers 4-6 exist, loss at the last
    torch.manual_seed(0)
    transformers.AutoModelForCausalLM.from_config(config).save_pretrained(folder / "my-model")
    tok.save_pretrained(folder / "my-model")
    (folder / "corpus.txt").write_text("\n".join(corpus()[:32]))  # two C0 batches a layer: seconds
    (folder / "hparams.yaml").write_text(HPARAMS)
    (folder / "requests.json").write_text(json.dumps(requests))


def test_the_readme_quickstart_runs_as_printed_from_the_shell_and_from_python(tmp_path, monkeypatch):
    commands, python, requests = quickstart()
    assert [c.split()[1] for c in commands] == ["stats", "edit", "eval"] and len(requests) == 1
    monkeypatch.setenv("COLLABEDIT_CACHE", str(tmp_path / "cache"))
    shell, script = tmp_path / "shell", tmp_path / "python"
    for folder in (shell, script):
        folder.mkdir()
        prepare(folder, requests)

    monkeypatch.chdir(shell)
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        for command in commands:
            assert main(shlex.split(command)[1:]) == 0, command
    table = out.getvalue().splitlines()
    assert table[3] == "edited model written to edited"  # after stats' three files
    assert table[4].split() == ["metric", "n", "model", "base", "change"]

    monkeypatch.chdir(script)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(io.StringIO()):
        exec(compile(python, "README.md", "exec"), {})
    efficacy = float(printed.getvalue().splitlines()[-1])
    assert efficacy == json.loads((shell / "eval.json").read_text())["summary"]["efficacy"]

    # The same three steps: the same statistics, the same edited weights.
    shell_weights, script_weights = load_file(str(shell / "edited" / "model.safetensors")), \
        load_file(str(script / "edited" / "model.safetensors"))
    assert all(torch.equal(shell_weights[k], script_weights[k]) for k in shell_weights)
    assert not torch.equal(shell_weights["transformer.h.5.mlp.c_proj.weight"],
                           load_file(str(shell / "my-model" / "model.safetensors"))["transformer.h.5.mlp.c_proj.weight"])
