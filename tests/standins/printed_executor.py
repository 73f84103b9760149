"""
A stand-in executor for the tests of the harness's own logic (keep/discard, thresholds, the ledger,
git moves, signals, recovery): it runs the stand-in train.py through the real executor, unsandboxed,
and takes the val_bpb the stand-in prints as if the trusted evaluator had measured it, so that a test
can choose the numbers. Selected with AUTORESEARCH_EXECUTOR=<this file>:execute (tests only);
the tests of trust itself (test_hostile.py, the real-train.py tests) use the real executor.
"""

from autoresearch import executor
from autoresearch.runner import parse_summary


def execute(spec, repo, profile_dir, time_budget, log_path, timeout, **kw):
    outcome = executor.execute(spec, repo, profile_dir, time_budget, log_path, timeout, sandboxed=False, **kw)
    with open(log_path, errors="replace") as f:
        summary = parse_summary(f.read())
    if outcome.returncode == 0 and not outcome.stopped and isinstance(summary.get("val_bpb"), (int, float)):
        outcome.handed_over, outcome.val_bpb = True, summary["val_bpb"]
        outcome.training_s = summary.get("training_seconds")
    return outcome
