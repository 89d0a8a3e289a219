"""Re-measure the recorded results on the shipped world (docs/results.md): writes benchmarks/*.json.

    .venv/bin/python scripts/measure_results.py [--only 10x20-sequential,10x20-parallel,rounds]

Each run is `collabedit simulate` as a user would call it; this script only adds a `run` block
(command, date, commit, CPU, wall time) and merges the four 3 x 5 x 5 runs into one file.
About 40 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import datetime
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
CLI = [sys.executable, "-m", "collabedit_secure.cli"]

RUNS = {
    "10x20-sequential": ["--parties", "10", "--edits-per-party", "20", "--schedule", "sequential",
                         "--methods", "collabedit,global,ta,sa,ties,none"],
    "10x20-parallel": ["--parties", "10", "--edits-per-party", "20", "--schedule", "parallel",
                       "--methods", "collabedit,global,ta,sa,ties,none"],
}
ROUNDS = {  # key in simulate-3x5x5-rounds.json -> extra arguments
    "sequential": ["--schedule", "sequential"],
    "sequential-float64": ["--schedule", "sequential", "--float64-weights"],
    "parallel": ["--schedule", "parallel"],
    "parallel-float64": ["--schedule", "parallel", "--float64-weights"],
}
ROUNDS_BASE = ["--parties", "3", "--edits-per-party", "5", "--rounds", "5", "--methods", "collabedit,global",
               "--no-fluency"]


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def simulate(args: list[str]) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        start = time.time()
        subprocess.run([*CLI, "simulate", *args, "--json", str(out)], check=True)
        result = json.loads(out.read_text())
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip()
    result["run"] = {"command": "collabedit simulate " + " ".join(args) + " --json OUT",
                     "date": datetime.date.today().isoformat(), "commit": commit,
                     "cpu": f"{cpu_name()}, 2 cores", "real_s": round(time.time() - start),
                     "world_build": "the shipped reference build (collabedit_secure/world/reference)"}
    result.pop("cases", None)  # per-case rows make the files megabytes long
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default="10x20-sequential,10x20-parallel,rounds")
    wanted = parser.parse_args().only.split(",")
    for name, args in RUNS.items():
        if name in wanted:
            (BENCH / f"simulate-{name}.json").write_text(json.dumps(simulate(args), indent=1) + "\n")
    if "rounds" in wanted:
        merged = {key: simulate(ROUNDS_BASE + extra) for key, extra in ROUNDS.items()}
        (BENCH / "simulate-3x5x5-rounds.json").write_text(json.dumps(merged, indent=1) + "\n")


if __name__ == "__main__":
    main()
