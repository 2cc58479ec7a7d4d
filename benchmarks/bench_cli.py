"""Command start-up: `tagger models` reading the recorded catalog, against building every registered model on the
meta device (what listing the zoo did before the catalog), and `tagger --help` against a bare `import torch`.

Each command runs in a fresh process, `--repeats` times; the table gives medians and the ratio to the reference
timed in the same run on the same machine.

    python benchmarks/bench_cli.py --repeats 5
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

PYTHON = sys.executable
CASES = {
    "tagger models --format json": [PYTHON, "-m", "tagger", "models", "--format", "json"],
    "reference: build every model on meta": [
        PYTHON, "-c", "from tagger.catalog import build_catalog; build_catalog()"],
    "tagger --help": [PYTHON, "-m", "tagger", "--help"],
    "reference: import torch": [PYTHON, "-c", "import torch"],
}


def timed(command: list[str]) -> tuple[float, int]:
    """(wall seconds, peak resident KB) of one run in a fresh process."""
    started = time.perf_counter()
    child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(child.pid, 0)
    if status:
        raise SystemExit(f"{' '.join(command)} failed with status {status}")
    return time.perf_counter() - started, usage.ru_maxrss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    load = os.getloadavg()[0]
    rows = []
    for name, command in CASES.items():
        runs = [timed(command) for _ in range(args.repeats)]
        rows.append({"case": name, "median_s": round(statistics.median(r[0] for r in runs), 3),
                     "peak_MB": round(max(r[1] for r in runs) / 1024)})
    median = {row["case"]: row["median_s"] for row in rows}
    rows[0]["vs_reference"] = round(median["reference: build every model on meta"] / median[rows[0]["case"]], 1)
    rows[2]["vs_reference"] = round(median["reference: import torch"] / median["tagger --help"], 1)
    print(json.dumps({"date": time.strftime("%Y-%m-%d"), "machine": platform.processor() or platform.machine(),
                      "load_average_before": round(load, 2), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
