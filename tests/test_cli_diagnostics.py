"""What `collabedit edit` and `eval` tell a person while they run, at each verbosity; the eval table
with `--base`; eval on a plain request list; SIGTERM during a long step. Real tiny models, real edits."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from collabedit_secure.cli import main
from tests.cli_models import REQUESTS, edit_argv, write_inputs

REPO = Path(__file__).resolve().parents[1]
REQUEST_LINE = re.compile(r"^compute_z (\d)/2 (\d) \((\w+) -> (\w+)\): p\(target\) ([0-9.]+) -> ([0-9.]+), "
                          r"loss ([0-9.]+) after (\d+) step\(s\), [0-9.]+s$")
STEP_LINE = re.compile(r"^  step \d+: loss [0-9.]+ = nll [0-9.]+ \+ kl [0-9.-]+ \+ weight decay [0-9.]+, "
                       r"p\(target\) [0-9.]+$")


@pytest.fixture(scope="module")
def edited(tmp_path_factory):
    """One edit at the default verbosity: its inputs, output folder and stderr lines (capsys is
    per test, so this captures by hand)."""
    folder = tmp_path_factory.mktemp("diag")
    files = write_inputs(folder)
    err, out = io.StringIO(), io.StringIO()
    cache = os.environ.get("COLLABEDIT_CACHE")
    os.environ["COLLABEDIT_CACHE"] = str(folder / "cache")  # C0 is computed now, not found in a cache
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
            assert main(edit_argv(files, folder / "edited")) == 0
    finally:
        if cache is None:
            os.environ.pop("COLLABEDIT_CACHE", None)
        else:
            os.environ["COLLABEDIT_CACHE"] = cache
    return files, folder / "edited", err.getvalue().splitlines(), out.getvalue()


def test_edit_reports_each_request_and_one_summary_line_on_stderr(edited):
    files, out, err, stdout = edited
    assert stdout == f"edited model written to {out}\n"  # stdout keeps the result alone
    requests = [m for line in err if (m := REQUEST_LINE.match(line))]
    assert [(m[1], m[2], m[3], m[4]) for m in requests] == [("1", "1", "Lyon", "English"), ("2", "2", "Paris", "guitar")]
    for match in requests:  # compute_z raised the target's probability, in at most v_num_grad_steps steps
        assert float(match[6]) > float(match[5]) and 1 <= int(match[8]) <= 6
    summary = [line for line in err if line.startswith("edited ")]
    assert len(summary) == 1
    corpus = files["corpus"].resolve()
    assert re.fullmatch(rf"edited 2 request\(s\), sequential: layers \[0, 1\], lambda 50, C0 from {corpus} corpus; "
                        r"load [0-9.]+s, C0 [0-9.]+s, compute_z [0-9.]+s, keys\+solve [0-9.]+s, save [0-9.]+s",
                        summary[0]), summary[0]
    assert any(line.startswith("C0 transformer.h.0.mlp.c_proj: computed over") for line in err)


def test_edit_meta_records_the_module_templates_used(edited):
    _, out, _, _ = edited
    meta = json.loads((out / "edit_meta.json").read_text())
    assert meta["module_templates"] == {
        "rewrite_module_tmp": "transformer.h.{}.mlp.c_proj", "layer_module_tmp": "transformer.h.{}",
        "mlp_module_tmp": "transformer.h.{}.mlp", "attn_module_tmp": "transformer.h.{}.attn",
        "ln_f_module": "transformer.ln_f", "lm_head_module": "transformer.wte"}


def test_verbose_adds_every_step_and_quiet_keeps_only_warnings(edited, tmp_path, capsys):
    files, _, _, _ = edited
    assert main(edit_argv(files, tmp_path / "v") + ["--verbose"]) == 0
    err = capsys.readouterr().err.splitlines()
    requests = [m for line in err if (m := REQUEST_LINE.match(line))]
    steps = [line for line in err if STEP_LINE.match(line)]
    assert len(requests) == 2 and len(steps) == sum(int(m[8]) for m in requests)
    assert steps[0].endswith(f"p(target) {requests[0][5]}")  # the first step is the unedited model's
    # Two requests MEMIT gives one key: a warning, which --quiet still shows, and nothing else.
    same_key = [REQUESTS[0], {**REQUESTS[0], "case_id": 3, "target_new": "Spain"}]
    files["requests"].write_text(json.dumps(same_key))
    try:
        assert main(edit_argv(files, tmp_path / "q") + ["--quiet"]) == 0
    finally:
        files["requests"].write_text(json.dumps(REQUESTS))
    captured = capsys.readouterr()
    assert captured.out == f"edited model written to {tmp_path / 'q'}\n"
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("warning: ") and "Lyon" in lines[0], captured.err


def test_eval_prints_the_model_beside_its_base_on_the_plain_request_list(edited, tmp_path, capsys):
    files, out, _, _ = edited
    report = tmp_path / "eval.json"
    assert main(["eval", "--model", str(out), "--base", str(files["model"]), "--dataset", str(files["requests"]),
                 "--json", str(report)]) == 0
    captured = capsys.readouterr()
    written = json.loads(report.read_text())
    summary, base = written["summary"], written["meta"]["base"]["summary"]
    assert written["meta"]["format"] == "plain requests" and written["meta"]["base"]["model"] == str(files["model"])
    assert [case["case_id"] for case in written["cases"]] == [1, 2] and summary["n"]["efficacy"] == 2
    lines = captured.out.splitlines()
    assert lines[0].split() == ["metric", "n", "model", "base", "change"]
    efficacy = next(line.split() for line in lines if line.startswith("efficacy "))
    assert efficacy == ["efficacy", "2", f"{summary['efficacy']:.2f}", f"{base['efficacy']:.2f}",
                        f"{summary['efficacy'] - base['efficacy']:+.2f}"]
    assert not any(line.startswith(("generalization", "fluency")) for line in lines)  # no such prompts
    assert "eval: scoring" in captured.err  # the evaluation's progress
    assert main(["eval", "--model", str(out), "--dataset", str(files["requests"]), "--json", str(report),
                 "--quiet"]) == 0
    captured = capsys.readouterr()
    assert captured.err == "" and captured.out.splitlines()[0].split() == ["metric", "n", "model"]


def test_eval_checks_the_base_before_evaluating_either_model(edited, tmp_path, capsys):
    files, out, _, _ = edited
    report = tmp_path / "eval.json"
    assert main(["eval", "--model", str(out), "--base", str(tmp_path / "nope"), "--dataset", str(files["requests"]),
                 "--json", str(report)]) == 2
    assert capsys.readouterr().err == f"collabedit: error: --base {tmp_path / 'nope'}: no such model directory\n"
    assert not report.exists()


@pytest.mark.parametrize("change, extra, message", [
    (lambda r: {k: v for k, v in r.items() if k != "target_true"}, [],
     "edit request 1 has no 'target_true': eval scores an edit as p(target_new) > p(target_true)"),
    (lambda r: r, ["--consistency", "world"], "--consistency needs a conflict or CounterFact dataset"),
], ids=["no target_true", "consistency"])
def test_eval_names_what_a_plain_request_list_lacks(change, extra, message, tmp_path, capsys):
    requests = tmp_path / "requests.json"
    requests.write_text(json.dumps([change(r) for r in REQUESTS]))
    report = tmp_path / "eval.json"
    assert main(["eval", "--model", str(tmp_path / "never-loaded"), "--dataset", str(requests), *extra,
                 "--json", str(report)]) == 2
    assert f"collabedit: error: {requests}: {message}" in capsys.readouterr().err
    assert not report.exists()


def test_sigterm_during_compute_z_ends_with_one_line(tmp_path):
    """A real SIGTERM while compute_z runs (thousands of steps, no early stop): exit 143, one line,
    no traceback, no output folder."""
    files = write_inputs(tmp_path, steps=100000, stop=1e-12)
    env = {**os.environ, "COLLABEDIT_CACHE": str(tmp_path / "cache"), "PYTHONPATH": str(REPO)}
    running = subprocess.Popen([sys.executable, "-m", "collabedit_secure.cli", *edit_argv(files, tmp_path / "out")],
                               cwd=REPO, env=env, stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    seen = []
    for line in running.stderr:  # stderr is a pipe: the bar writes whole lines, the first at 0%
        seen.append(line)
        if line.startswith("compute_z:"):
            break
        assert time.monotonic() < deadline, "".join(seen)
    time.sleep(0.5)  # inside the optimisation
    running.send_signal(signal.SIGTERM)
    rest, err = running.communicate(timeout=60)
    assert running.returncode == 128 + signal.SIGTERM, err
    assert rest == "" and "Traceback" not in err
    assert err.splitlines()[-1] == "collabedit edit: terminated (C0 statistics checkpointed so far resume on the next run)"
    assert err.count("terminated") == 1 and not (tmp_path / "out").exists()
