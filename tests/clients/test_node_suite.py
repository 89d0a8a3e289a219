"""Runs the Node package's own tests (`node --test clients/node/test/`): the conformance vectors in
proto/conformance/ and the unit tests, so that `scripts/dev.sh test` (pytest) runs them too."""

from __future__ import annotations

import subprocess

from .node_env import NODE_PACKAGE, REPO, node_executable


def test_node_test_suite_passes():
    node = node_executable()
    result = subprocess.run([node, "--test", str(NODE_PACKAGE / "test")], cwd=REPO, capture_output=True, text=True,
                            timeout=240)
    tail = (result.stdout + result.stderr)[-6000:]
    assert result.returncode == 0, f"node --test clients/node/test/ failed:\n{tail}"
    assert "# fail 0" in result.stdout, tail
