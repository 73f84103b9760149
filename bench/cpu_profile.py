"""
Benchmark the unchanged train.py on the `cpu` profile: val_bpb, tokens/s, MFU against this machine's
measured fp32 matmul rate, start-up, eval and total seconds.

    python bench/cpu_profile.py [--runs 3] [--budget SECONDS]

Runs `python prepare.py --profile cpu` if needed, measures the matmul peak (and stores it where
train.py looks for it, so its mfu_percent uses the same peak), then runs train.py --runs times on
different seeds and prints each summary and the medians. Paste the output into BENCHMARKS.md.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ["AUTORESEARCH_PROFILE"] = "cpu"

import torch  # noqa: E402

import prepare  # noqa: E402

KEYS = ["val_bpb", "training_seconds", "total_seconds", "peak_vram_mb", "mfu_percent", "total_tokens_M",
        "num_steps", "num_params_M", "tokens_per_second", "startup_seconds", "eval_seconds"]


def parse(stdout):
    out = {}
    for line in stdout.split("\n---\n", 1)[-1].splitlines():
        key, _, value = line.partition(":")
        if key in KEYS:
            out[key] = float(value)
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--budget", type=float, help="override TIME_BUDGET (not comparable with 300 s results)")
    args = parser.parse_args()
    if not os.path.exists(os.path.join(prepare.PROFILE_DIR, "manifest.json")):
        subprocess.run([sys.executable, "prepare.py", "--profile", "cpu"], cwd=ROOT, check=True)

    peak = prepare.measure_matmul_flops("cpu", torch.float32, n=1024, seconds=3.0)
    key = f"{prepare.device_name('cpu')}|{torch.float32}"
    path = os.path.join(prepare.CACHE_DIR, "peak_flops.json")
    known = json.load(open(path)) if os.path.exists(path) else {}
    known[key] = peak
    json.dump(known, open(path, "w"), indent=1)
    print(f"machine: {prepare.device_name('cpu')}, torch {torch.__version__}")
    print(f"measured fp32 matmul peak: {peak / 1e9:.1f} GFLOP/s (1024x1024, best of 3 s)")

    env = dict(os.environ)
    if args.budget:
        env["AUTORESEARCH_TIME_BUDGET"] = str(args.budget)
    results = []
    for seed in range(args.runs):
        env["AUTORESEARCH_SEED"] = str(42 + seed)
        t0 = time.time()
        r = subprocess.run([sys.executable, "train.py"], cwd=ROOT, env=env, capture_output=True, text=True)
        if r.returncode != 0:
            sys.exit(f"run {seed} failed:\n{r.stdout[-2000:]}{r.stderr[-2000:]}")
        row = parse(r.stdout)
        row["wall_seconds"] = time.time() - t0
        results.append(row)
        print(f"run {seed} (seed {42 + seed}): " + ", ".join(f"{k} {v:g}" for k, v in row.items()), flush=True)
    print("median: " + ", ".join(f"{k} {statistics.median(r[k] for r in results):g}" for k in results[0]))
    if len(results) > 1:
        print(f"val_bpb stdev over {len(results)} seeds: {statistics.stdev(r['val_bpb'] for r in results):.6f}")


if __name__ == "__main__":
    main()
