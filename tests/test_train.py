"""train.py end to end on the smoke profile: the output contract the harness and agents rely on."""

import ast
import os
import pty
import re
import subprocess
import sys
from collections import Counter

import pytest

from conftest import ROOT
from trainpy import load_definitions

SUMMARY_KEYS = ["val_bpb", "training_seconds", "total_seconds", "peak_vram_mb", "mfu_percent",
                "total_tokens_M", "num_steps", "num_params_M", "depth"]


def run_train(cwd, **env):
    """train.py's output as written: decoded without text mode, which would turn each '\\r' into '\\n'."""
    r = subprocess.run([sys.executable, "train.py"], cwd=cwd, env=dict(os.environ, **env), capture_output=True,
                       timeout=300)
    return subprocess.CompletedProcess(r.args, r.returncode, r.stdout.decode(errors="replace"),
                                       r.stderr.decode(errors="replace"))


@pytest.fixture(scope="module")
def smoke_run(smoke_cache):
    return run_train(ROOT)  # the smoke profile's own 15 s budget


def summary(stdout):
    block = stdout.split("\n---\n", 1)[1]
    return [tuple(line.split(":", 1)) for line in block.strip().splitlines()]


def test_smoke_run_ends_with_the_summary_block_in_order(smoke_run):
    assert smoke_run.returncode == 0, smoke_run.stderr[-2000:]
    pairs = summary(smoke_run.stdout)
    assert [k for k, _ in pairs[:len(SUMMARY_KEYS)]] == SUMMARY_KEYS
    values = {k: v.strip() for k, v in pairs}
    assert re.fullmatch(r"\d+\.\d{6}", values["val_bpb"])
    assert values["profile"] == "smoke" and values["device"] == "cpu"
    assert float(values["peak_vram_mb"]) > 0 and 0 < float(values["mfu_percent"]) < 100


def test_smoke_run_trains_for_the_budget_and_its_loss_falls(smoke_run):
    values = {k: v.strip() for k, v in summary(smoke_run.stdout)}
    assert float(values["training_seconds"]) >= 15
    losses = [float(m) for m in re.findall(r"loss: ([\d.]+)", smoke_run.stdout)]
    assert len(losses) >= 3 and int(values["num_steps"]) >= 3
    assert losses[-1] < losses[0] - 0.2
    assert float(values["val_bpb"]) < 3.4  # uniform guessing over 1024 tokens is ~3.67 bits per byte


STEP_LINE = r"step \d{5} \(\d+\.\d%\) \| loss: [\d.]+ \| dt: \d+ms \| mfu: [\d.]+% \| remaining: \d+s"


def test_progress_lines_show_step_percent_loss_speed_and_remaining_time(smoke_run):
    lines = [l for l in smoke_run.stdout.splitlines() if l.startswith("step ")]
    assert all(re.fullmatch(STEP_LINE, line) for line in lines), lines
    assert all(len(line) <= 80 for line in lines)


def test_progress_in_a_log_file_is_a_few_newline_terminated_lines(smoke_run):
    """Not a terminal (run.log): the first steps, then a line every ~5 s, and the last step, so that
    `tail -n 50 run.log` stays short; no '\\r' line thousands of characters long."""
    assert "\r" not in smoke_run.stdout + smoke_run.stderr  # the eval's progress bar too
    values = {k: v.strip() for k, v in summary(smoke_run.stdout)}
    steps = [int(m) for m in re.findall(r"^step (\d+) ", smoke_run.stdout, re.M)]
    assert steps[:3] == [0, 1, 2] and steps[-1] == int(values["num_steps"]) - 1
    assert len(steps) <= 3 + float(values["training_seconds"]) / 5 + 2
    assert max(len(line) for line in (smoke_run.stdout + smoke_run.stderr).splitlines()) <= 100


def test_progress_on_a_terminal_is_one_line_rewritten_in_place(smoke_cache):
    """A real terminal (a pty) as stdout: every step rewrites the line, which fits 80 columns."""
    leader, follower = pty.openpty()
    proc = subprocess.Popen([sys.executable, "train.py"], cwd=ROOT, stdout=follower, stderr=subprocess.DEVNULL,
                            env=dict(os.environ, AUTORESEARCH_TIME_BUDGET="3"))
    os.close(follower)
    output = b""
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        output += chunk
    assert proc.wait(timeout=300) == 0
    os.close(leader)
    text = output.decode(errors="replace").replace("\r\n", "\n")
    redraws = [part.split("\n")[0] for part in text.split("\r") if part.startswith("step ")]
    assert len(redraws) >= 2
    assert all(part.endswith("\x1b[K") and len(part) - len("\x1b[K") <= 80 for part in redraws), redraws
    assert all(re.fullmatch(STEP_LINE, part[:-len("\x1b[K")]) for part in redraws)


def divergent_copy(tmp_path):
    """train.py with a NaN learning rate: the loss becomes NaN after the first step."""
    for name in ("constants.py", "prepare.py"):
        (tmp_path / name).write_text((ROOT / name).read_text())
    source = (ROOT / "train.py").read_text()
    (tmp_path / "train.py").write_text(source.replace("\n# Set-up\n", "\nEMBEDDING_LR = float('nan')\n# Set-up\n"))
    return tmp_path


def test_nan_loss_fails_fast_with_a_clear_message(smoke_cache, tmp_path):
    r = run_train(divergent_copy(tmp_path))
    assert r.returncode == 1
    assert re.search(r"^FAIL: loss is nan at step \d+", r.stdout, re.M)
    assert "val_bpb:" not in r.stdout


# --- the hyper-parameter block -----------------------------------------------------------------

# the values in effect on each device (the cpu ones are the tuned profile of BENCHMARKS.md)
PER_DEVICE = {
    "cuda": {"DEPTH": 8, "ASPECT_RATIO": 64, "HEAD_DIM": 128, "WINDOW_PATTERN": "SSSL",
             "TOTAL_BATCH_SIZE": 2**19, "DEVICE_BATCH_SIZE": 128},
    "mps": {"DEPTH": 4, "ASPECT_RATIO": 64, "HEAD_DIM": 64, "WINDOW_PATTERN": "L",
            "TOTAL_BATCH_SIZE": 2**15, "DEVICE_BATCH_SIZE": 32},
    "cpu": {"DEPTH": 4, "ASPECT_RATIO": 16, "HEAD_DIM": 64, "WINDOW_PATTERN": "L",
            "TOTAL_BATCH_SIZE": 2**12, "DEVICE_BATCH_SIZE": 4},
}


def module_assignments(tree):
    """How often each name is assigned by module-level code (inside if/else blocks too, not in a def or class)."""
    counts = Counter()
    def visit(statements):
        for stmt in statements:
            if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                continue
            if isinstance(stmt, ast.Assign):
                counts.update(t.id for t in stmt.targets if isinstance(t, ast.Name))
            for block in ("body", "orelse", "finalbody", "handlers"):
                visit(getattr(stmt, block, []))
    visit(tree.body)
    return counts


def test_each_hyper_parameter_is_assigned_once():
    """One line per knob: no device block further down overrides the value an agent edits at the top."""
    tree = ast.parse((ROOT / "train.py").read_text())
    first_class = next(i for i, stmt in enumerate(tree.body) if isinstance(stmt, ast.ClassDef))
    knobs = [t.id for stmt in tree.body[:first_class] if isinstance(stmt, ast.Assign)
             for t in stmt.targets if isinstance(t, ast.Name) and t.id.isupper()]
    assert set(PER_DEVICE["cpu"]) <= set(knobs)
    counts = module_assignments(tree)
    assert {name: counts[name] for name in knobs if counts[name] != 1} == {}


def test_the_cpu_run_uses_the_per_device_defaults():
    assert {name: load_definitions()[name] for name in PER_DEVICE["cpu"]} == PER_DEVICE["cpu"]


def test_editing_a_knobs_line_changes_the_value_the_cpu_run_uses(tmp_path):
    edits = {"DEPTH": 3, "ASPECT_RATIO": 24, "HEAD_DIM": 32, "WINDOW_PATTERN": "SL", "TOTAL_BATCH_SIZE": 2**11,
             "DEVICE_BATCH_SIZE": 2}
    source = (ROOT / "train.py").read_text()
    for name, value in edits.items():
        source, n = re.subn(rf"^{name} = .*$", f"{name} = {value!r}", source, count=1, flags=re.M)
        assert n == 1
    (tmp_path / "train.py").write_text(source)
    assert {name: load_definitions(tmp_path / "train.py")[name] for name in edits} == edits
