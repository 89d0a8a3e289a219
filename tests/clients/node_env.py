"""Finding node and the installed Node package; the tests FAIL (not skip) when it is not installed."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
NODE_PACKAGE = REPO / "clients" / "node"
NODE_CLI = NODE_PACKAGE / "bin" / "collabedit-node.js"
INSTALL_HINT = "run `npm ci --prefix clients/node` (CI installs it: .ci/run, scripts/dev.sh test)"


def node_executable() -> str:
    """Path of node (>= 20); pytest.fail with the install hint if it is missing."""
    node = shutil.which("node")
    if node is None:
        pytest.fail(f"node (Node.js >= 20) is not on PATH; install Node.js, then {INSTALL_HINT}", pytrace=False)
    missing = [dep for dep in ("@grpc/grpc-js", "@grpc/proto-loader")
               if not (NODE_PACKAGE / "node_modules" / dep / "package.json").is_file()]
    if missing:
        pytest.fail(f"clients/node dependencies {', '.join(missing)} are not installed: {INSTALL_HINT}", pytrace=False)
    return node
