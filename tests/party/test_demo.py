"""The demo end to end: coordinator + three party daemons as processes, real MEMIT, vs global MEMIT.

On a tiny GPT-2 (always) and on the embedded world model (when its reference build is installed)."""

from __future__ import annotations

import dataclasses
import json

import pytest

from collabedit_secure.demo import demo_main
from tests.editing.conftest import OBJECTS, RELATIONS, SUBJECTS, corpus, make_tokenizer, tiny_hparams, tiny_model


def _records() -> list[dict]:
    out = []
    for i, subject in enumerate(SUBJECTS[:6]):
        relation = RELATIONS[i % len(RELATIONS)]
        true, new = OBJECTS[i % len(OBJECTS)], OBJECTS[(i + 3) % len(OBJECTS)]
        out.append({"case_id": i, "requested_rewrite": {"prompt": relation, "subject": subject,
                                                         "target_new": {"str": new}, "target_true": {"str": true}},
                    "paraphrase_prompts": [f"Indeed. {relation.format(subject)}"],
                    "neighborhood_prompts": [relation.format(SUBJECTS[(i + 6) % len(SUBJECTS)])]})
    return out


@pytest.fixture(scope="module")
def tiny_setup(tmp_path_factory):
    from collabedit_secure.pipeline import compute_stats

    root = tmp_path_factory.mktemp("tiny")
    tok = make_tokenizer()
    model = tiny_model("gpt2", tok)
    model.save_pretrained(root / "model")
    tok.save_pretrained(root / "model")
    hparams = dataclasses.replace(tiny_hparams(), edit_dtype="float64", rewrite_module_tmp="transformer.h.{}.mlp.c_proj")
    hparams.to_yaml(root / "hparams.yaml")
    (root / "corpus.txt").write_text("\n".join(corpus()))
    compute_stats(str(root / "model"), [1, 2], str(root / "corpus.txt"), root / "c0", None, str(root / "hparams.yaml"))
    (root / "records.json").write_text(json.dumps(_records()))
    return root


@pytest.mark.parametrize("schedule", ["sequential"])
def test_demo_on_a_tiny_model(tiny_setup, tmp_path, schedule, capsys):
    out = tmp_path / "demo.json"
    code = demo_main(["--model", str(tiny_setup / "model"), "--hparams", str(tiny_setup / "hparams.yaml"),
                      "--c0", str(tiny_setup / "c0"), "--records", str(tiny_setup / "records.json"),
                      "--edits-per-party", "2", "--schedule", schedule, "--workdir", str(tmp_path / "work"),
                      "--json", str(out), "--timeout", "240"])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    report = json.loads(out.read_text())
    assert report["delta_rel_err_vs_global"] <= 1e-9
    assert set(report["processes"]) == {"coordinator", "party-a", "party-b", "party-c"}
    assert report["processes"]["party-a"]["bytes_sent"] > 0 and report["failed_processes"] == []
    assert "rel.err vs global" in printed.out and "federated" in printed.out
    for method in ("federated", "global"):
        assert report["metrics"][method]["efficacy"] is not None
    # The federation's model is the global edit's (same ΔW): the same metrics.
    assert report["metrics"]["federated"] == pytest.approx(report["metrics"]["global"])


def test_demo_on_the_world_model(tmp_path):
    out = tmp_path / "demo.json"
    assert demo_main(["--edits-per-party", "2", "--workdir", str(tmp_path / "work"), "--json", str(out),
                      "--timeout", "600"]) == 0
    assert json.loads(out.read_text())["delta_rel_err_vs_global"] <= 1e-9
