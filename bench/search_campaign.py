"""
Run a campaign of one proposer for a wall time on a profile, in a throwaway clone of this checkout,
and print how far it got beyond the noise: the number the search proposer is judged by.

    python bench/search_campaign.py --profile cpu --hours 2.5 --search tpe [--screen 0.3] [--at 1,2.5]
    python bench/search_campaign.py --profile smoke --max-experiments 8 --runs 5    # the README demo

Each run clones the committed HEAD into a temporary folder, prepares the profile's data if it is not
(offline for cpu and smoke), runs `autoresearch loop` there (baseline repeated --baseline-repeats
times, which measures the noise and sets the keep threshold), then reads the campaign's ledger:
baseline mean, noise std, threshold, best full-budget val_bpb kept (screened runs never count), the
improvement in % of the baseline and whether it beats the threshold, also at the --at checkpoints
(hours after the campaign started, screening included). --json prints the same as one object per run.
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from autoresearch.ledger import Ledger  # noqa: E402

TAG = "bench"


def clone(workdir):
    repo = os.path.join(workdir, "repo")
    subprocess.run(["git", "clone", "--quiet", ROOT, repo], check=True)
    for key, value in (("user.email", "bench@example.com"), ("user.name", "bench")):
        subprocess.run(["git", "config", key, value], cwd=repo, check=True)
    return repo


def run_campaign(repo, args, env):
    if subprocess.run([sys.executable, "prepare.py", "--profile", args.profile], cwd=repo, env=env,
                      capture_output=True, text=True).returncode != 0:
        sys.exit(f"error: prepare.py --profile {args.profile} failed; run it by hand to see why")
    command = [sys.executable, "-m", "autoresearch.cli", "loop", "--tag", TAG, "--proposer", args.proposer,
               "--search", args.search, "--search-seed", str(args.seed),
               "--baseline-repeats", str(args.baseline_repeats)]
    if args.screen:
        command += ["--screen", str(args.screen)]
    if args.hours:
        command += ["--hours", str(args.hours)]
    if args.max_experiments:
        command += ["--max-experiments", str(args.max_experiments)]
    if args.confirm:
        command += ["--confirm"]
    started = time.time()
    with open(os.path.join(os.path.dirname(repo), "loop.log"), "w") as log:
        code = subprocess.run(command, cwd=repo, env=env, stdout=log, stderr=subprocess.STDOUT).returncode
    return code, time.time() - started


def summary(repo, checkpoints):
    """The campaign's numbers from its ledger."""
    ledger = Ledger(repo=repo)
    rows = ledger.experiments(tag=TAG)
    campaign = ledger.campaign(TAG) or {}
    baselines = [r["val_bpb"] for r in rows if r.get("is_baseline") and r["status"] in ("keep", "discard")
                 and r.get("val_bpb") is not None and not (r.get("cause") or "").startswith("starved")]
    baseline = statistics.fmean(baselines) if baselines else None
    noise = campaign.get("noise_std")
    threshold = max(campaign.get("min_delta") or 0.0, 2 * (noise or 0.0))
    start = min((r["started_at"] for r in rows if r.get("started_at")), default=None)

    def best_until(seconds=None):
        keeps = [r["val_bpb"] for r in rows if r["status"] == "keep" and not r.get("is_baseline")
                 and r.get("val_bpb") is not None and (seconds is None or r["ended_at"] - start <= seconds)]
        return min(keeps) if keeps else None

    def numbers(best):
        if best is None or baseline is None:
            return dict(best=best, improvement_pct=None, beats_noise=False)
        return dict(best=best, improvement_pct=100 * (baseline - best) / baseline,
                    beats_noise=baseline - best > threshold)

    out = dict(baseline_mean=baseline, baseline_runs=baselines, noise_std=noise, threshold=threshold,
               experiments=len(rows), kept=sum(r["status"] == "keep" and not r.get("is_baseline") for r in rows),
               screened=sum(r["status"] == "screened" for r in rows),
               failed=sum(r["status"] in ("crash", "timeout", "invalid") for r in rows), **numbers(best_until()))
    out["at"] = {f"{h:g}h": numbers(best_until(h * 3600)) for h in checkpoints}
    return out


def line(result):
    pct = result["improvement_pct"]
    text = (f"baseline {result['baseline_mean']:.4f} (noise std {result['noise_std'] or 0:.4f}, threshold "
            f"{result['threshold']:.4f}); {result['experiments']} experiments, {result['kept']} kept, "
            f"{result['screened']} screened, {result['failed']} failed; best "
            + (f"{result['best']:.4f} ({pct:+.2f}% below the baseline, "
               f"{'beyond' if result['beats_noise'] else 'within'} the noise)" if pct is not None else "the baseline"))
    for name, at in result["at"].items():
        text += f"; at {name}: " + (f"{at['improvement_pct']:.2f}%{' (beyond noise)' if at['beats_noise'] else ''}"
                                    if at["improvement_pct"] is not None else "nothing kept")
    return text + f"; {result['wall_s'] / 60:.1f} min"


def main():
    p = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    p.add_argument("--profile", default="smoke")
    p.add_argument("--proposer", default="search")
    p.add_argument("--search", default="tpe", choices=["tpe", "cmaes", "random"])
    p.add_argument("--screen", type=float)
    p.add_argument("--hours", type=float, help="the loop's --hours (no experiment starts after it)")
    p.add_argument("--max-experiments", type=int)
    p.add_argument("--baseline-repeats", type=int, default=3)
    p.add_argument("--confirm", action="store_true")
    p.add_argument("--seed", type=int, default=0, help="--search-seed of the first run; run k uses seed + k")
    p.add_argument("--runs", type=int, default=1, help="campaigns to run one after another")
    p.add_argument("--at", default="", help="comma-separated hours to report the best at, e.g. 1,2.5")
    p.add_argument("--keep", action="store_true", help="keep the clones (their paths are printed)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    if not args.hours and not args.max_experiments:
        p.error("give --hours or --max-experiments (or both)")
    checkpoints = [float(h) for h in args.at.split(",") if h.strip()]
    env = {**os.environ, "AUTORESEARCH_PROFILE": args.profile, "PYTHONPATH": ROOT}
    env.pop("AUTORESEARCH_TIME_BUDGET", None)
    results = []
    base_seed = args.seed
    for k in range(args.runs):
        args.seed = base_seed + k
        workdir = tempfile.mkdtemp(prefix="search-campaign-")
        try:
            repo = clone(workdir)
            code, wall = run_campaign(repo, args, env)
            result = dict(summary(repo, checkpoints), exit_code=code, wall_s=wall, seed=args.seed,
                          search=args.search, screen=args.screen, profile=args.profile)
            results.append(result)
            print(json.dumps(result) if args.json else f"run {k + 1} (seed {args.seed}): {line(result)}", flush=True)
            if code != 0:
                print(open(os.path.join(workdir, "loop.log")).read()[-2000:], file=sys.stderr)
        finally:
            if args.keep:
                print(f"kept {workdir}", file=sys.stderr)
            else:
                shutil.rmtree(workdir, ignore_errors=True)
    if len(results) > 1 and not args.json:
        beats = sum(r["beats_noise"] for r in results)
        pcts = [r["improvement_pct"] or 0.0 for r in results]
        print(f"{beats}/{len(results)} runs beat the noise; improvement median {statistics.median(pcts):.2f}%, "
              f"range {min(pcts):.2f}% to {max(pcts):.2f}%")


if __name__ == "__main__":
    main()
