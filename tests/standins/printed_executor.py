"""
A stand-in executor for the tests of the harness's own logic (keep/discard, thresholds, the ledger,
git moves, signals, recovery): it runs the stand-in train.py through the real executor, unsandboxed,
and takes the val_bpb the stand-in prints as if the trusted evaluator had measured it, so that a test
can choose the numbers (the CPU share other processes took, too: unmeasured unless STANDIN_CPU_SHARE
says, so that a busy test machine never decides). Selected with AUTORESEARCH_EXECUTOR=<this file>:execute (tests only);
the tests of trust itself (test_hostile.py, the real-train.py tests) use the real executor.
"""

import os

from autoresearch import executor
from autoresearch.runner import parse_summary


def execute(spec, repo, profile_dir, time_budget, log_path, timeout, **kw):
    outcome = executor.execute(spec, repo, profile_dir, time_budget, log_path, timeout, sandboxed=False, **kw)
    with open(log_path, errors="replace") as f:
        summary = parse_summary(f.read())
    if outcome.returncode == 0 and not outcome.stopped and isinstance(summary.get("val_bpb"), (int, float)):
        outcome.handed_over, outcome.val_bpb = True, summary["val_bpb"]
        outcome.training_s = summary.get("training_seconds")
    # STANDIN_CPU_SHARE: one value per run (the last one repeats), counted in the file STANDIN_CPU_SHARE_RUNS
    share = os.environ.get("STANDIN_CPU_SHARE", "").split(",")
    counter = os.environ.get("STANDIN_CPU_SHARE_RUNS")
    if share != [""] and counter:
        with open(counter, "a+") as f:
            f.seek(0)
            n = len(f.read().split())
            f.write("run\n")
        outcome.cpu_share_others = float(share[min(n, len(share) - 1)])
    else:
        outcome.cpu_share_others = None
    outcome.gpu_others = None
    return outcome
