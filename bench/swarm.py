"""
Experiments per hour of `autoresearch swarm` with 1 and more workers, local and Ray backends.

    python bench/swarm.py [--profile smoke] [--minutes 4] [--workers 1 2] [--backends local ray]

For each backend and worker count, in a fresh clone of HEAD (this checkout's branches and ledger are
untouched), runs `autoresearch swarm --proposer search --baseline-repeats 1 --hours MINUTES/60` with
the real train.py, then reads the clone's ledger and prints the finished experiments, experiments per
hour (finished experiments over the time from the first start to the last end), the scaling efficiency
against one worker of the same backend, and the mean wall time of one experiment (dispatch to result:
what a backend adds shows here).
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


def campaign(profile, minutes, workers, backend):
    work = tempfile.mkdtemp(prefix="autoresearch-bench-swarm-")
    try:
        subprocess.run(["git", "clone", "-q", ROOT, work], check=True)
        env = dict(os.environ, AUTORESEARCH_PROFILE=profile)
        proc = subprocess.run([sys.executable, "-m", "autoresearch.cli", "swarm", "--tag", "bench", "--workers",
                               str(workers), "--backend", backend, "--hours", str(minutes / 60),
                               "--baseline-repeats", "1"], cwd=work, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            sys.exit(f"swarm {backend} x{workers} failed: {proc.stderr.strip().splitlines()[-1:]}")
        with sqlite3.connect(os.path.join(work, ".autoresearch", "ledger.sqlite")) as db:
            rows = db.execute("SELECT started_at, ended_at, status FROM experiments WHERE status != 'running' "
                              "AND (cause IS NULL OR cause NOT LIKE 'interrupted%') ORDER BY id").fetchall()
        span = max(r[1] for r in rows) - min(r[0] for r in rows)
        return dict(finished=len(rows), per_hour=len(rows) * 3600 / span,
                    wall=statistics.mean(r[1] - r[0] for r in rows))
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="smoke")
    parser.add_argument("--minutes", type=float, default=4.0, help="wall time of each campaign")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--backends", nargs="+", default=["local", "ray"])
    args = parser.parse_args()
    subprocess.run([sys.executable, "prepare.py", "--profile", args.profile], cwd=ROOT, check=True,
                   capture_output=True, env=dict(os.environ, AUTORESEARCH_PROFILE=args.profile))
    print(f"profile {args.profile}, {args.minutes:g} min per campaign, {os.cpu_count()} cores")
    print(f"{'backend':8} {'workers':>7} {'finished':>8} {'exp/hour':>9} {'scaling':>8} {'s/experiment':>13}")
    for backend in args.backends:
        single = None
        for workers in args.workers:
            r = campaign(args.profile, args.minutes, workers, backend)
            single = single or (r["per_hour"] if workers == 1 else None)
            scaling = f"{r['per_hour'] / (single * workers):.0%}" if single else "-"
            print(f"{backend:8} {workers:7d} {r['finished']:8d} {r['per_hour']:9.1f} {scaling:>8} {r['wall']:13.1f}",
                  flush=True)


if __name__ == "__main__":
    main()
