"""`collabedit apply` and `revert`: a saved delta onto its base gives what `edit` saved, bit for bit;
revert gives the base back to float32 rounding; a delta that does not fit is refused, nothing written."""

from __future__ import annotations

import contextlib
import io
import json

import pytest
import torch
from safetensors.torch import load_file

from collabedit_secure.cli import main
from tests.cli_models import edit_argv, write_inputs, write_model


@pytest.fixture(scope="module")
def edited(tmp_path_factory):
    folder = tmp_path_factory.mktemp("apply")
    files = write_inputs(folder)
    with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
        assert main(edit_argv(files, folder / "edited") + ["--quiet"]) == 0
    return folder, files["model"], folder / "edited"


def weights(folder):
    return load_file(str(folder / "model.safetensors"))


def test_apply_gives_what_edit_saved_and_revert_gives_the_base_back(edited, capsys):
    folder, base, out = edited
    assert main(["apply", "--model", str(base), "--delta", str(out / "delta"), "--out", str(folder / "a")]) == 0
    assert capsys.readouterr().out == f"edited model written to {folder / 'a'}\n"
    applied, saved = weights(folder / "a"), weights(out)
    assert applied.keys() == saved.keys() and all(torch.equal(applied[k], saved[k]) for k in saved)
    meta = json.loads((folder / "a" / "edit_meta.json").read_text())
    assert meta["applied_from"] == str((out / "delta").resolve()) and meta["n_requests"] == 2
    assert meta["module_templates"] == json.loads((out / "edit_meta.json").read_text())["module_templates"]

    # The delta saved beside the applied model is the default for revert.
    assert main(["revert", "--model", str(folder / "a"), "--out", str(folder / "r")]) == 0
    reverted, original = weights(folder / "r"), weights(base)
    edited_names = {f"{name}.weight" for name in ("transformer.h.0.mlp.c_proj", "transformer.h.1.mlp.c_proj")}
    changed = {k for k in original if not torch.equal(original[k], applied[k])}
    assert changed == edited_names
    for name, value in original.items():
        if name not in edited_names:
            assert torch.equal(reverted[name], value), name
            continue
        # (W0 + ΔW) - ΔW in float32: each entry within one rounding of the edited weight's size.
        bound = torch.finfo(torch.float32).eps * applied[name].abs().max()
        assert float((reverted[name] - value).abs().max()) <= bound
        assert not torch.equal(reverted[name], applied[name])


def test_a_delta_is_refused_by_a_model_it_was_not_computed_on(edited, tmp_path, capsys):
    folder, base, out = edited
    other = write_model(tmp_path / "other", seed=1)
    capsys.readouterr()  # transformers' "Writing model shards"
    assert main(["apply", "--model", str(other), "--delta", str(out / "delta"), "--out", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err.splitlines()[-1]  # after transformers' "Loading weights" bar
    assert err.startswith(f"collabedit: error: --delta {out / 'delta'} does not fit --model {other}: model fingerprint ")
    assert "a delta only applies to the exact weights it was computed from" in err
    # Reverting a model that is not the edited one: the base itself, then another model.
    assert main(["revert", "--model", str(base), "--delta", str(out / "delta"), "--out", str(tmp_path / "r")]) == 2
    assert "it is not edited (or already reverted), so there is nothing to revert" in capsys.readouterr().err
    assert main(["revert", "--model", str(other), "--delta", str(out / "delta"), "--out", str(tmp_path / "r")]) == 2
    assert "is not that of the model this delta edited" in capsys.readouterr().err
    assert main(["revert", "--model", str(base), "--out", str(tmp_path / "r")]) == 2
    assert f"no delta given and {base} has no delta/ folder; pass --delta DIR" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other"]  # nothing written, not even a temporary folder


def test_apply_never_writes_over_an_existing_folder(edited, capsys):
    folder, base, out = edited
    with pytest.raises(SystemExit) as exit_info:
        main(["apply", "--model", str(base), "--delta", str(out / "delta"), "--out", str(out)])
    assert exit_info.value.code == 2
    assert f"{out} already exists and is not an empty directory" in capsys.readouterr().err
