"""
train.py's set-up without its training loop, for the benchmarks that measure what train.py builds
(bench/gpu_eval.py, bench/gpu_profile.py, bench/startup.py): its text up to LOOP_MARKER.
"""

import os
import sys

LOOP_MARKER = "# Training loop"


def setup_code(train_path):
    """(train.py's code up to its training loop, compiled; the namespace to run it in). train.py's folder
    goes first on the import path, so its own prepare.py is the one it imports. A train.py without the
    marker exits with one line (code 2)."""
    head, found, _ = open(train_path, encoding="utf-8").read().partition(LOOP_MARKER)
    if not found:
        print(f"error: {train_path} has no '{LOOP_MARKER}' section to stop before", file=sys.stderr)
        sys.exit(2)
    sys.path.insert(0, os.path.dirname(os.path.abspath(train_path)))
    return compile(head, train_path, "exec"), {"__name__": "train_setup", "__file__": os.path.abspath(train_path)}
