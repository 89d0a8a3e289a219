"""The source distribution carries everything its wheel build needs (setup.py compiles csrc/ with CMake)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_sdist_holds_the_cmake_project_and_every_kernel_source(tmp_path):
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    tree = tmp_path / "tree"
    for name in tracked:  # a copy, so the build's egg-info stays out of the checkout
        (tree / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, tree / name)
    subprocess.run([sys.executable, "setup.py", "-q", "sdist", "-d", str(tmp_path / "dist")], cwd=tree,
                   check=True, capture_output=True)
    (archive,) = (tmp_path / "dist").glob("*.tar.gz")
    with tarfile.open(archive) as sdist:
        packed = {Path(*Path(member).parts[1:]).as_posix() for member in sdist.getnames()}
    needed = {"CMakeLists.txt", "setup.py", "pyproject.toml"} | {n for n in tracked if n.startswith(("csrc/", "proto/"))}
    shipped_world = {n for n in tracked if n.startswith("collabedit_secure/world/reference/")}
    assert "collabedit_secure/world/reference/model/model.safetensors" in shipped_world
    needed |= shipped_world  # the package's default model must travel with it
    assert any(n.endswith(".cu") for n in needed) and any(n.endswith(".cpp") for n in needed)
    assert needed <= packed, sorted(needed - packed)
