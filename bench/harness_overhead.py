"""
Measure, on a clone of this repository, what a campaign costs beyond training, and how noisy the baseline is.

    python bench/harness_overhead.py [--profile cpu] [--repeats 3] [--experiments 4] [--rev REV]

Runs `autoresearch loop --proposer search --baseline-repeats REPEATS --max-experiments EXPERIMENTS` in a
fresh clone of REV (default HEAD; its own harness runs: compare two revisions in one sitting), so this
checkout's branches and ledger are untouched, then reads its ledger and prints, per
experiment, the wall time of the whole experiment (ledger start to end: commit, process start, data and
model set-up, training, evaluation, parsing, git, ledger) minus the profile's time budget, and the standard
deviation of val_bpb over the baseline repeats (the noise floor). The reference loses about 26 s per
300 s run (325.9 s total).
"""

import argparse
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="cpu")
    parser.add_argument("--repeats", type=int, default=3, help="baseline runs on different seeds")
    parser.add_argument("--experiments", type=int, default=4, help="all experiments, the baseline repeats included")
    parser.add_argument("--rev", default="HEAD", help="the revision whose harness and train.py to measure")
    args = parser.parse_args()
    env = dict(os.environ, AUTORESEARCH_PROFILE=args.profile)
    subprocess.run([sys.executable, "prepare.py", "--profile", args.profile], cwd=ROOT, env=env, check=True,
                   capture_output=True)
    work = tempfile.mkdtemp(prefix="autoresearch-bench-")
    try:
        subprocess.run(["git", "clone", "-q", ROOT, work], check=True)
        subprocess.run(["git", "checkout", "-q", args.rev], cwd=work, check=True)
        subprocess.run(["git", "checkout", "-q", "-b", "bench-base"], cwd=work, check=True)
        subprocess.run([sys.executable, "-m", "autoresearch.cli", "loop", "--proposer", "search", "--tag", "bench",
                        "--baseline-repeats", str(args.repeats), "--max-experiments", str(args.experiments)],
                       cwd=work, env={**env, "PYTHONPATH": work}, check=True)
        db = sqlite3.connect(os.path.join(work, ".autoresearch", "ledger.sqlite"))
        db.row_factory = sqlite3.Row
        rows = db.execute("SELECT * FROM experiments WHERE tag = 'bench' ORDER BY id").fetchall()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"\n{'#':>3} {'status':8} {'val_bpb':>9} {'train s':>8} {'total s':>8} {'wall s':>8} {'overhead s':>10}  description")
    overheads = []
    for i, r in enumerate(rows, 1):
        wall = r["ended_at"] - r["started_at"]
        overhead = wall - r["time_budget"]
        overheads.append(overhead)
        print(f"{i:>3} {r['status']:8} {r['val_bpb'] or 0:9.6f} {r['training_seconds'] or 0:8.1f} "
              f"{r['total_seconds'] or 0:8.1f} {wall:8.1f} {overhead:10.1f}  {r['description']}")
    print(f"median overhead per experiment: {statistics.median(overheads):.1f} s over a {rows[0]['time_budget']:g} s budget"
          f" ({args.rev})")
    base = [r["val_bpb"] for r in rows[:args.repeats] if r["val_bpb"]]
    if len(base) > 1:
        print(f"baseline val_bpb over {len(base)} seeds: mean {statistics.mean(base):.6f}, "
              f"stdev {statistics.stdev(base):.6f}")


if __name__ == "__main__":
    main()
