"""Preprocessing wall time and peak memory on full-size synthetic data, each run in a fresh process.

Writes the synthetic MovieLens-1M and Amazon-Electronics data with `metaselector synth` (full
size: 6,040 users / 1,000,209 ratings; 192,403 users / 63,001 items / 1,689,188 reviews) unless
they exist, then times `metaselector inspect --no-cache` (parse, encode, history features) and
reads its peak resident memory.

    python benchmarks/preprocess.py --work /tmp/metaselector-bench [--json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

CHILD = """
import resource, sys
from metaselector.cli import main
sys.argv = ["metaselector", *sys.argv[1:]]
main()
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)
"""


def run(args: list[str]) -> tuple[float, float, str]:
    """Run the command line in a fresh process; return (seconds, its own peak RSS in MB, stdout)."""
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", CHILD, *args], capture_output=True, text=True, check=True)
    elapsed = time.perf_counter() - start
    return elapsed, int(out.stderr.strip().splitlines()[-1]) / 1024, out.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("/tmp/metaselector-bench"))
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    result = {}
    for like, marker in (("movielens-1m", "ml-1m/ratings.dat"), ("amazon-electronics", "meta_Electronics.json.gz")):
        folder = args.work / like
        if not (folder / marker).is_file():
            run(["synth", "--like", like, "--out", str(folder)])
        seconds, peak_mb, stdout = run(["inspect", like, "--data-dir", str(folder), "--json", "--no-cache"])
        result[like] = {"seconds": round(seconds, 1), "peak_mb": round(peak_mb), **json.loads(stdout)}
    if args.json:
        print(json.dumps(result))
    else:
        for like, row in result.items():
            print(f"{like:<20} {row['seconds']:>6.1f} s  peak {row['peak_mb']:>6} MB  "
                  f"{row['users']:,} users, {row['items']:,} items, {row['samples']:,} samples, "
                  f"{row['features']:,} features")


if __name__ == "__main__":
    main()
