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

To compare search variants in one sitting, name them with --variant SAMPLER[:SCREEN] (repeatable):

    python bench/search_campaign.py --profile cpu --hours 2.5 --at 1,2.5 --variant random --variant tpe --pin

--pin runs the variants at the same time, each pinned to a core of its own with one thread
(OMP_NUM_THREADS=1), its own prepared-data cache, and the starved-run check off (the other variants
keep the other cores busy by design): one variant per core, so a 2-core machine compares two. Each
run is slower than on the whole machine, the same for every variant; compare them with each other.
Without --pin the variants run one after another.
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from autoresearch.ledger import Ledger  # noqa: E402

TAG = "bench"
SAMPLERS = ("tpe", "cmaes", "random")


def clone(workdir):
    repo = os.path.join(workdir, "repo")
    subprocess.run(["git", "clone", "--quiet", ROOT, repo], check=True)
    for key, value in (("user.email", "bench@example.com"), ("user.name", "bench")):
        subprocess.run(["git", "config", key, value], cwd=repo, check=True)
    return repo


def run_campaign(repo, args, env, search, screen, seed, core=None):
    """Prepare the profile and run the loop in repo (on one core when core is given); (exit code, wall s)."""
    pin = (lambda: os.sched_setaffinity(0, {core})) if core is not None else None
    if subprocess.run([sys.executable, "prepare.py", "--profile", args.profile], cwd=repo, env=env,
                      capture_output=True, text=True, preexec_fn=pin).returncode != 0:
        sys.exit(f"error: prepare.py --profile {args.profile} failed; run it by hand to see why")
    command = [sys.executable, "-m", "autoresearch.cli", "loop", "--tag", TAG, "--proposer", args.proposer,
               "--search", search, "--search-seed", str(seed), "--baseline-repeats", str(args.baseline_repeats)]
    if screen:
        command += ["--screen", str(screen)]
    if args.hours:
        command += ["--hours", str(args.hours)]
    if args.max_experiments:
        command += ["--max-experiments", str(args.max_experiments)]
    if args.confirm:
        command += ["--confirm"]
    started = time.time()
    with open(os.path.join(os.path.dirname(repo), "loop.log"), "w") as log:
        code = subprocess.run(command, cwd=repo, env=env, stdout=log, stderr=subprocess.STDOUT,
                              preexec_fn=pin).returncode
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


def parse_variant(text):
    """(sampler, screen fraction or None) of a --variant SAMPLER[:SCREEN]."""
    sampler, _, screen = text.partition(":")
    if sampler not in SAMPLERS:
        raise argparse.ArgumentTypeError(f"unknown sampler {sampler!r} in {text!r}; one of {', '.join(SAMPLERS)}")
    try:
        return sampler, float(screen) if screen else None
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: the screen fraction after ':' must be a number, e.g. tpe:0.3")


def variant_name(search, screen):
    return f"{search} --screen {screen:g}" if screen else search


def one_campaign(args, env, search, screen, seed, core=None):
    """Clone, run one campaign, read its ledger; the result dict (the clone kept with --keep)."""
    workdir = tempfile.mkdtemp(prefix="search-campaign-")
    try:
        repo = clone(workdir)
        if core is not None:  # its own data cache: prepare.py writes there, the others read theirs
            env = {**env, "AUTORESEARCH_CACHE": os.path.join(workdir, "cache"), "OMP_NUM_THREADS": "1",
                   "MKL_NUM_THREADS": "1", "AUTORESEARCH_STARVED_SHARE": "1"}
        code, wall = run_campaign(repo, args, env, search, screen, seed, core)
        result = dict(summary(repo, args.checkpoints), exit_code=code, wall_s=wall, seed=seed, search=search,
                      screen=screen, profile=args.profile, core=core)
        if code != 0:
            print(open(os.path.join(workdir, "loop.log")).read()[-2000:], file=sys.stderr)
        return result
    finally:
        if args.keep:
            print(f"kept {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def pinned(args, env, variants):
    """The variants at once, one per core; their results in order."""
    cores = sorted(os.sched_getaffinity(0))
    if len(variants) > len(cores):
        sys.exit(f"error: --pin runs one variant per core: {len(variants)} variants, {len(cores)} cores here; "
                 f"name at most {len(cores)}, or leave out --pin to run them one after another")
    results = [None] * len(variants)

    def work(k):
        results[k] = one_campaign(args, env, *variants[k], args.seed, core=cores[k])

    threads = [threading.Thread(target=work, args=(k,)) for k in range(len(variants))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def table(results, checkpoints):
    """A markdown table: per variant, the improvement at each checkpoint ("*" beyond the noise)."""
    names = [f"{h:g}h" for h in checkpoints]
    lines = ["| variant | baseline (threshold) | " + " | ".join(names + ["end"]) + " |",
             "|---" * (len(names) + 3) + "|"]
    for r in results:
        cells = [r["at"][n] for n in names] + [r]
        text = [f"{c['improvement_pct']:.2f}%{'*' if c['beats_noise'] else ''}" if c["improvement_pct"] is not None
                else "0" for c in cells]
        lines.append(f"| {variant_name(r['search'], r['screen'])} | {r['baseline_mean']:.4f} ({r['threshold']:.4f}) | "
                     + " | ".join(text) + " |")
    return "\n".join(lines) + "\n(* beyond the noise threshold)"


def main():
    p = argparse.ArgumentParser(description=__doc__.strip(), formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--profile", default="smoke")
    p.add_argument("--proposer", default="search")
    p.add_argument("--search", default="tpe", choices=SAMPLERS)
    p.add_argument("--screen", type=float)
    p.add_argument("--variant", action="append", type=parse_variant, metavar="SAMPLER[:SCREEN]",
                   help="a search variant to compare (repeatable), e.g. random, tpe, tpe:0.3; "
                        "instead of --search/--screen")
    p.add_argument("--pin", action="store_true", help="run the variants at once, one per core, one thread each (see above)")
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
    if args.pin and (not args.variant or args.runs != 1):
        p.error("--pin runs the --variant campaigns at once; name them with --variant (and no --runs)")
    args.checkpoints = [float(h) for h in args.at.split(",") if h.strip()]
    env = {**os.environ, "AUTORESEARCH_PROFILE": args.profile, "PYTHONPATH": ROOT}
    env.pop("AUTORESEARCH_TIME_BUDGET", None)
    if args.variant:
        results = pinned(args, env, args.variant) if args.pin else [
            one_campaign(args, env, search, screen, args.seed) for search, screen in args.variant]
        for result in results:
            print(json.dumps(result) if args.json else f"{variant_name(result['search'], result['screen'])} (seed "
                  f"{result['seed']}{', core %d' % result['core'] if result['core'] is not None else ''}): "
                  f"{line(result)}", flush=True)
        if not args.json:
            print(table(results, args.checkpoints))
        return
    results = []
    for k in range(args.runs):
        result = one_campaign(args, env, args.search, args.screen, args.seed + k)
        results.append(result)
        print(json.dumps(result) if args.json else f"run {k + 1} (seed {result['seed']}): {line(result)}", flush=True)
    if len(results) > 1 and not args.json:
        beats = sum(r["beats_noise"] for r in results)
        pcts = [r["improvement_pct"] or 0.0 for r in results]
        print(f"{beats}/{len(results)} runs beat the noise; improvement median {statistics.median(pcts):.2f}%, "
              f"range {min(pcts):.2f}% to {max(pcts):.2f}%")


if __name__ == "__main__":
    main()
