"""
`autoresearch run`: one experiment, its integrity check, its decision, and what it leaves behind
(branch, refs/autoresearch/, results.tsv, the ledger, no stray processes).

Most tests use a stand-in train.py that prints a summary block at once (the runner does not care how
val_bpb was made); the end-to-end campaign, the crash and the default timeout use the real train.py
on the smoke profile with a budget of a few seconds.
"""

import json
import os
import pty
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from autoresearch import executor, hostfiles, results, runner, sandbox
from autoresearch.ledger import Ledger
from conftest import git

ROOT = Path(__file__).resolve().parents[1]


def fake_train(val_bpb=1.0, body=""):
    """A train.py that prints the reference summary block (and whatever body does first)."""
    return textwrap.dedent("""\
        import os, sys
        {body}
        print("step 00001 (50.0%) | loss: 5.000000", end="\\r")
        print("step 00002 (100.0%) | loss: 4.000000")
        print("---")
        print("val_bpb:          {val_bpb:.6f}")
        print("training_seconds: 1.0")
        print("total_seconds:    2.5")
        print("peak_vram_mb:     1536.0")
        print("mfu_percent:      1.50")
        print("total_tokens_M:   0.1")
        print("num_steps:        2")
        print("num_params_M:     1.2")
        print("depth:            2")
        print("profile:          smoke")
        print("device:           cpu")
        print("device_name:      stand-in cpu")
        print("seed:             " + os.environ.get("AUTORESEARCH_SEED", "42"))
        """).format(val_bpb=val_bpb, body=textwrap.dedent(body))


@pytest.fixture
def repo(campaign_repo, printed_metric):
    """The campaign repo on branch autoresearch/t with the stand-in train.py as its base commit."""
    (campaign_repo / "train.py").write_text(fake_train(1.0))
    git(campaign_repo, "commit", "-qam", "stand-in train.py")
    git(campaign_repo, "checkout", "-qb", "autoresearch/t")
    return campaign_repo


def run(repo, description, train=None, **kw):
    if train is not None:
        (repo / "train.py").write_text(train)
    return runner.run_experiment(repo, description, **kw)


def cli(repo, *args, env=None, **kw):
    return subprocess.run([sys.executable, "-m", "autoresearch.cli", *args], cwd=repo, capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}, **kw)


def results_tsv(repo):
    return [line.split("\t") for line in (repo / "results.tsv").read_text().splitlines()]


def live_group_members(pgid):
    """Processes of a process group that are still alive (zombies do not count)."""
    members = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(pid))
    return members


def hanging_train(pid_file, ignore_sigterm=True):
    """A train.py that starts a child and sleeps; both ignore SIGTERM unless told otherwise."""
    ignore = "signal.signal(signal.SIGTERM, signal.SIG_IGN)" if ignore_sigterm else "pass"
    return textwrap.dedent(f"""\
        import os, signal, subprocess, sys, time
        {ignore}
        child = subprocess.Popen([sys.executable, "-c",
            "import signal, time; {ignore}; time.sleep(600)"])
        with open({str(pid_file)!r}, "w") as f:
            f.write(f"{{os.getpid()}} {{child.pid}}")
        print("step 00001 (1.0%) | loss: 9.000000", flush=True)
        time.sleep(600)
        """)


# -- parsing -------------------------------------------------------------------------------------
def test_parse_summary_reads_the_block_after_val_bpb():
    text = "step 00001 (1%) | loss: 5.0\rstep 00002 (2%) | loss: 4.9\nprofile: smoke | device: cpu\n---\n" \
           "val_bpb:          0.997900\nnum_steps:        953\ndevice_name:      Intel Xeon\nseed: 42\n"
    summary = runner.parse_summary(text)
    assert summary == {"val_bpb": 0.9979, "num_steps": 953, "device_name": "Intel Xeon", "seed": 42}
    assert isinstance(summary["num_steps"], int)


def test_parse_summary_without_val_bpb_is_empty():
    assert runner.parse_summary("step 00001 | loss: 5.0\nTraceback (most recent call last):\n") == {}


def test_crash_cause_names_oom_fail_exception_or_exit_code():
    oom = "Traceback (most recent call last):\n  File \"train.py\", line 9\ntorch.OutOfMemoryError: CUDA out of memory."
    assert runner.crash_cause(oom, 1).startswith("OOM: torch.OutOfMemoryError")
    assert runner.crash_cause("step 3\nFAIL: loss is nan at step 3; the run diverged\n", 1) == \
        "FAIL: loss is nan at step 3; the run diverged"
    exc = 'x\nTraceback (most recent call last):\n  File "train.py", line 7, in <module>\n    boom()\nValueError: bad\n'
    assert runner.crash_cause(exc, 1) == 'exception: ValueError: bad (File "train.py", line 7, in <module>)'
    syntax = ('  File "/autoresearch/experiment/train.py", line 12\n    x = (\n        ^\n'
              'SyntaxError: \'(\' was never closed\n')
    assert runner.crash_cause(syntax, 1) == \
        'exception: SyntaxError: \'(\' was never closed (File "/autoresearch/experiment/train.py", line 12)'
    assert runner.crash_cause("", 3) == "exit code 3 without a val_bpb line"
    assert runner.crash_cause("", -9) == "killed by SIGKILL (out of memory?)"


# -- the campaign, with the real train.py ----------------------------------------------------------
def test_campaign_of_real_runs_keeps_discards_and_records_consistently(campaign_repo, monkeypatch):
    """Baseline keep -> keep -> discard with the real train.py (smoke, 3 s). On a shared CPU two runs'
    val_bpb cannot be ordered in advance, so the last two force their decision with --threshold
    (keep when val_bpb < best + 10, discard unless val_bpb < best - 10); the rule itself is tested
    below with the stand-in."""
    repo = campaign_repo
    monkeypatch.setenv("AUTORESEARCH_TIME_BUDGET", "3")
    git(repo, "checkout", "-qb", "autoresearch/real")
    base = git(repo, "rev-parse", "HEAD")
    train = (repo / "train.py").read_text()

    first = cli(repo, "run", "-m", "baseline")
    assert first.returncode == 0, first.stderr
    assert first.stdout.splitlines()[-2].startswith("keep  #1")

    (repo / "train.py").write_text(train.replace("WARMDOWN_RATIO = 0.5", "WARMDOWN_RATIO = 0.4"))
    second = cli(repo, "run", "-m", "warmdown 0.4", "--threshold", "-10")
    assert second.returncode == 0, second.stderr
    kept = git(repo, "rev-parse", "HEAD")

    (repo / "train.py").write_text(train.replace("MATRIX_LR = 0.04", "MATRIX_LR = 0.0"))
    third = cli(repo, "run", "-m", "matrix lr 0", "--threshold", "10", "--seed", "7")
    assert third.returncode == 0, third.stderr

    rows = Ledger(repo=repo).experiments(tag="real")
    assert [r["status"] for r in rows] == ["keep", "keep", "discard"], [r["cause"] for r in rows]
    assert [r["parent_commit"] for r in rows] == [base, base, kept]
    assert rows[0]["commit_sha"] == base and rows[1]["commit_sha"] == kept
    assert all(r["val_bpb"] > 0 and r["num_steps"] > 0 and r["profile"] == "smoke" and r["device"]
               and r["time_budget"] == 3 and "val_bpb:" in r["log_tail"] for r in rows)
    assert rows[2]["seed"] == 7 and rows[0]["seed"] == 42 and rows[1]["is_baseline"] == 0
    # judged on the harness's own evaluation, in the sandbox, with the training time it measured
    assert all(r["sandbox"] == "bwrap" and abs(r["val_bpb"] - r["claimed_val_bpb"]) < 2e-6
               and 0 < r["measured_training_s"] and r["eval_s"] > 0 for r in rows)
    # how much each really trained, and how much of the machine others took meanwhile
    assert all(r["tokens_per_second"] > 0 and 0 <= r["cpu_share_others"] <= 1 and r["starved"] in (0, 1)
               for r in rows)
    assert "trained" in first.stdout and "tokens/s" in first.stdout
    assert "+WARMDOWN_RATIO = 0.4" in rows[1]["diff"] and "+MATRIX_LR = 0.0" in rows[2]["diff"]
    # the branch stayed on the keep; the discard is reachable under refs/autoresearch/
    assert git(repo, "rev-parse", "HEAD") == kept
    assert git(repo, "rev-parse", f"refs/autoresearch/real/{rows[2]['commit_sha'][:7]}") == rows[2]["commit_sha"]
    assert "WARMDOWN_RATIO = 0.4" in (repo / "train.py").read_text() and git(repo, "status", "--porcelain") == ""
    # results.tsv agrees with the ledger row by row
    tsv = results_tsv(repo)
    assert tsv[0] == ["commit", "val_bpb", "memory_gb", "status", "description"]
    assert tsv[1:] == [[r["commit_sha"][:7], f"{r['val_bpb']:.6f}", f"{r['peak_vram_mb'] / 1024:.1f}", r["status"],
                        r["description"] + (" [starved]" if r["starved"] else "")] for r in rows]  # a busy machine


def test_without_a_usable_sandbox_the_run_warns_once_and_the_row_says_unsandboxed(campaign_repo, monkeypatch):
    monkeypatch.setenv("AUTORESEARCH_TIME_BUDGET", "3")
    monkeypatch.setenv("AUTORESEARCH_SANDBOX", "off")
    git(campaign_repo, "checkout", "-qb", "autoresearch/open")
    proc = cli(campaign_repo, "run", "-m", "baseline")
    assert proc.returncode == 0, proc.stderr
    assert [line for line in proc.stderr.splitlines() if line.startswith("warning: ")] == \
        ["warning: running unsandboxed: AUTORESEARCH_SANDBOX=off"]
    row = Ledger(repo=campaign_repo).experiments(tag="open")[-1]
    assert row["status"] == "keep" and row["sandbox"] == "none"
    assert abs(row["val_bpb"] - row["claimed_val_bpb"]) < 2e-6  # still the harness's own evaluation


def test_real_train_raising_is_a_crash_with_the_exception(campaign_repo):
    repo = campaign_repo
    git(repo, "checkout", "-qb", "autoresearch/crash")
    train = (repo / "train.py").read_text()
    marker = 'DEVICE_TYPE = "cuda"'
    (repo / "train.py").write_text(train.replace(marker, 'raise RuntimeError("boom from the test")\n' + marker, 1))
    row = runner.run_experiment(repo, "raise early")
    assert row["status"] == "crash" and row["val_bpb"] is None
    assert row["cause"].startswith("exception: RuntimeError: boom from the test (File ")
    assert "train.py" in row["cause"] and "RuntimeError" in row["log_tail"]
    assert results_tsv(repo)[1][1:4] == ["0.000000", "0.0", "crash"]
    # a crash is not kept: the branch is back on its start, the commit under refs/autoresearch/
    assert git(repo, "rev-parse", "HEAD") == row["parent_commit"] != row["commit_sha"]
    assert git(repo, "rev-parse", f"refs/autoresearch/crash/{row['commit_sha'][:7]}") == row["commit_sha"]


# -- the decision ----------------------------------------------------------------------------------
def test_a_model_larger_than_the_write_limit_is_not_taken_over(tmp_path, monkeypatch):
    """A sparse model.pt2 costs the run nothing on disk; the harness's copy would write all of it."""
    monkeypatch.setattr(executor, "WRITE_LIMIT", 1 << 20)
    handoff, private = tmp_path / "handoff", tmp_path / "private"
    handoff.mkdir(), private.mkdir()
    os.truncate(os.open(handoff / "model.pt2", os.O_CREAT | os.O_WRONLY), 2 << 20)
    model, error = executor.take_over({"file": "model.pt2", "batch_size": 4}, str(handoff), str(private))
    assert model is None and error == "model.pt2 is larger than 0.000976562 GiB"
    assert not os.listdir(private)


def test_a_model_that_cannot_be_copied_is_refused_in_one_line(tmp_path, monkeypatch):
    handoff, private = tmp_path / "handoff", tmp_path / "private"
    handoff.mkdir(), private.mkdir()
    (handoff / "model.pt2").write_bytes(b"weights")

    def unwritable(source, target, size):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(hostfiles, "copy_file", unwritable)
    model, error = executor.take_over({"file": "model.pt2", "batch_size": 4}, str(handoff), str(private))
    assert model is None and error == "model.pt2 could not be copied (Permission denied)"


@pytest.mark.parametrize("kind", ["link to a host file", "link to /dev/zero", "fifo"])
def test_a_model_file_that_is_not_a_regular_file_is_never_opened_as_one(tmp_path, kind):
    """The experiment may swap its model.pt2 for a link at any moment: the harness opens the name once,
    without following links and without waiting on a pipe, and copies only what it opened."""
    handoff, private = tmp_path / "handoff", tmp_path / "private"
    handoff.mkdir(), private.mkdir()
    secret = tmp_path / "host-file"
    secret.write_text("the host's")
    {"link to a host file": lambda p: os.symlink(secret, p), "link to /dev/zero": lambda p: os.symlink("/dev/zero", p),
     "fifo": os.mkfifo}[kind](handoff / "model.pt2")
    model, error = executor.take_over({"file": "model.pt2", "batch_size": 4}, str(handoff), str(private))
    assert model is None and error == "no model.pt2 in the hand-off folder"
    assert not os.listdir(private)


def channel_answering(sock, reply):
    """The harness's end of a hand-off socket whose copy and evaluation give `reply` at once."""
    return executor._Channel(sock, take=lambda message: ("model.pt2", None), evaluate=lambda model, message: reply)


def test_a_message_without_an_end_ends_the_conversation_before_it_fills_the_harness(tmp_path):
    """One endless line on the hand-off socket would be read into the harness's memory whole."""
    ours, theirs = socket.socketpair()
    channel = channel_answering(ours, {"val_bpb": 1.0})
    channel.start()
    theirs.sendall(json.dumps({"event": "training"}).encode() + b"\n")
    try:
        theirs.sendall(b"x" * (4 * executor.MAX_MESSAGE_CHARS))
    except OSError:
        pass  # the harness closed its end
    channel.join(10)
    assert not channel.is_alive() and channel.events == ["training"]
    theirs.close()


def test_the_run_hears_back_its_val_bpb_and_nothing_of_how_the_evaluation_went(tmp_path):
    """How long the evaluation took would tell the run which path its program took on the validation
    rows; the harness keeps that to itself."""
    ours, theirs = socket.socketpair()
    channel = channel_answering(ours, {"val_bpb": 1.25, "seconds": 3.21, "ahead": True})
    channel.start()
    theirs.sendall(json.dumps({"event": "model", "file": "model.pt2", "batch_size": 4}).encode() + b"\n")
    reply = theirs.makefile("r").readline()
    assert json.loads(reply) == {"val_bpb": 1.25} and channel.result["seconds"] == 3.21
    theirs.close()
    channel.join(10)


def test_the_hand_off_ends_when_the_harness_holds_its_copy_of_the_model():
    """A run may go on training while the harness copies its model (a sparse pad in front of the archive
    makes a copy of seconds, and the run rewrites what is not copied yet): the copy counts as the run's
    export, within the time outside training the rules allow, not as the harness's evaluation."""
    ours, theirs = socket.socketpair()

    def slow_copy(message):
        time.sleep(1.0)
        return "model.pt2", None

    channel = executor._Channel(ours, take=slow_copy, evaluate=lambda model, message: {"val_bpb": 1.0})
    launched = time.time()
    channel.start()
    for event in ("training", "exporting"):
        theirs.sendall(json.dumps({"event": event}).encode() + b"\n")
    theirs.sendall(json.dumps({"event": "model", "file": "model.pt2", "batch_size": 4}).encode() + b"\n")
    assert json.loads(theirs.makefile("r").readline()) == {"val_bpb": 1.0}
    theirs.close()
    channel.join(10)
    outcome = executor.Outcome()
    executor._read_timings(outcome, channel, executor._Clock(launched, 10.0, 3.0, 100.0))
    assert outcome.export_s >= 1.0 and outcome.handoff_s >= 1.0 and outcome.eval_s < 0.5


def test_a_kept_log_is_cut_to_its_last_bytes(tmp_path, monkeypatch):
    """A swarm keeps each run's log where it was written; a run may write gigabytes into it."""
    monkeypatch.setattr(runner, "MAX_ARCHIVED_LOG", 1000)
    log = tmp_path / "run.log"
    log.write_bytes(b"x" * 10_000 + b"the end\n")
    assert runner.trim_log(str(log)) == (b"x" * 10_000 + b"the end\n")[-1000:] == log.read_bytes()


def test_first_experiment_is_the_baseline_and_kept(repo):
    row = run(repo, "baseline")
    assert (row["status"], row["is_baseline"], row["best_before"], row["val_bpb"]) == ("keep", 1, None, 1.0)
    assert row["commit_sha"] == row["parent_commit"] == git(repo, "rev-parse", "HEAD") and row["diff"] == ""
    campaign = Ledger(repo=repo).campaign("t")
    assert campaign["base_commit"] == row["commit_sha"] and campaign["profile"] == "smoke"
    assert len(campaign["fingerprint"]) == 64


def test_better_is_kept_and_advances_the_branch(repo):
    run(repo, "baseline")
    row = run(repo, "better", fake_train(0.9))
    assert (row["status"], row["best_before"], row["threshold"]) == ("keep", 1.0, 0.0)
    assert git(repo, "rev-parse", "HEAD") == row["commit_sha"] != row["parent_commit"]
    assert git(repo, "log", "-1", "--format=%s") == "better"
    assert "+print(\"val_bpb:          0.900000\")" in row["diff"]


def test_each_experiments_log_is_kept_beside_the_ledger_after_run_log_is_reused(repo):
    first = run(repo, "baseline")
    second = run(repo, "better", fake_train(0.9))
    assert first["log_path"] != second["log_path"]
    assert Path(first["log_path"]).parent == repo / ".autoresearch" / "logs"
    assert "val_bpb:          1.000000" in Path(first["log_path"]).read_text()
    assert "val_bpb:          0.900000" in Path(second["log_path"]).read_text()


def test_absurd_numbers_in_a_summary_are_dropped_and_the_run_is_recorded(repo):
    absurd = (fake_train(0.9).replace("num_steps:        2", "num_steps:        99999999999999999999999")
              .replace("mfu_percent:      1.50", "mfu_percent:      inf")
              .replace('"seed:             " + os.environ.get("AUTORESEARCH_SEED", "42")',
                       '"seed:             -99999999999999999999"'))
    run(repo, "baseline")
    row = run(repo, "absurd claims", absurd)
    assert row["status"] == "keep" and row["val_bpb"] == 0.9
    assert (row["num_steps"], row["mfu_percent"], row["seed"]) == (None, None, None)


def test_the_seed_the_harness_gave_is_recorded_whatever_train_py_prints(repo):
    liar = fake_train(1.0).replace('"seed:             " + os.environ.get("AUTORESEARCH_SEED", "42")',
                                   '"seed:             42"')
    assert run(repo, "baseline", liar, seed=7)["seed"] == 7


def test_worse_is_discarded_reset_and_saved_under_refs(repo):
    baseline = run(repo, "baseline")
    row = run(repo, "worse", fake_train(1.1))
    assert row["status"] == "discard" and row["parent_commit"] == baseline["commit_sha"]
    assert git(repo, "rev-parse", "HEAD") == baseline["commit_sha"]
    assert (repo / "train.py").read_text() == fake_train(1.0) and git(repo, "status", "--porcelain") == ""
    assert git(repo, "for-each-ref", "--format=%(refname) %(objectname)", "refs/autoresearch/") == \
        f"refs/autoresearch/t/{row['commit_sha'][:7]} {row['commit_sha']}"
    assert [line[3] for line in results_tsv(repo)[1:]] == ["keep", "discard"]


def test_a_gain_within_the_threshold_is_discarded(repo):
    run(repo, "baseline")
    assert run(repo, "noise-sized gain", fake_train(0.995), threshold=0.01)["status"] == "discard"


def test_threshold_defaults_to_the_campaign_noise_floor(repo):
    run(repo, "baseline")
    Ledger(repo=repo).save_campaign(tag="t", min_delta=0.001, noise_std=0.02)
    row = run(repo, "small gain", fake_train(0.97))
    assert row["threshold"] == pytest.approx(0.04) and row["status"] == "discard"


def test_commits_the_agent_made_itself_belong_to_the_experiment(repo):
    baseline = run(repo, "baseline")
    (repo / "train.py").write_text(fake_train(1.2))
    git(repo, "commit", "-qam", "agent's own commit")
    row = run(repo, "worse, committed by the agent")
    assert row["status"] == "discard" and row["parent_commit"] == baseline["commit_sha"]
    assert row["commit_sha"] == git(repo, "rev-parse", f"refs/autoresearch/t/{row['commit_sha'][:7]}")
    assert git(repo, "rev-parse", "HEAD") == baseline["commit_sha"]


def test_seed_is_passed_to_train_and_recorded(repo):
    assert run(repo, "seeded", seed=1234)["seed"] == 1234


def test_proposer_and_cost_are_recorded(repo):
    row = run(repo, "proposed", proposer="openai", model="gpt-x", prompt_tokens=100, completion_tokens=20,
              cost_usd=0.01, worker="w7")
    assert (row["proposer"], row["model"], row["prompt_tokens"], row["completion_tokens"], row["cost_usd"],
            row["worker"]) == ("openai", "gpt-x", 100, 20, 0.01, "w7")


def test_decide_false_records_without_moving_the_branch_until_settled(repo):
    baseline = run(repo, "baseline")
    row = run(repo, "candidate", fake_train(1.1), decide=False)
    assert row["status"] == "discard" and git(repo, "rev-parse", "HEAD") == row["commit_sha"]
    row = runner.settle(repo, row["id"], keep=False, cause="not confirmed")
    assert (row["status"], row["cause"]) == ("discard", "not confirmed")
    assert git(repo, "rev-parse", "HEAD") == baseline["commit_sha"]
    assert git(repo, "rev-parse", f"refs/autoresearch/t/{row['commit_sha'][:7]}") == row["commit_sha"]
    assert results_tsv(repo)[-1][0] == row["commit_sha"][:7] and results_tsv(repo)[-1][3] == "discard"


def test_results_tsv_holds_only_the_campaign_of_the_checkouts_branch(repo):
    run(repo, "baseline t")
    run(repo, "better t", fake_train(0.9))
    git(repo, "checkout", "-qb", "autoresearch/u")
    run(repo, "baseline u", fake_train(0.8))
    assert [line[4] for line in results_tsv(repo)[1:]] == ["baseline u"]
    git(repo, "checkout", "-q", "autoresearch/t")
    run(repo, "worse t", fake_train(1.5))
    assert [line[4] for line in results_tsv(repo)[1:]] == ["baseline t", "better t", "worse t"]


def test_results_tsv_is_rewritten_from_the_ledger_so_stale_lines_go(repo):
    run(repo, "baseline")
    (repo / "results.tsv").write_text("commit\tval_bpb\tmemory_gb\tstatus\tdescription\n"
                                      "0000000\t0.500000\t1.0\tkeep\tfrom an older campaign\n")
    run(repo, "worse", fake_train(1.1))
    rows = Ledger(repo=repo).experiments(tag="t")
    assert results_tsv(repo) == [["commit", "val_bpb", "memory_gb", "status", "description"]] + [
        [r["commit_sha"][:7], f"{r['val_bpb']:.6f}", "1.5", r["status"], r["description"]] for r in rows]
    assert sorted(p.name for p in repo.iterdir() if "results" in p.name) == ["results.tsv"]  # no temp file left


def test_a_results_tsv_a_killed_writer_left_half_written_does_not_count_as_a_change(repo):
    leftover = repo / f"{results.TEMP_PREFIX}x" / "results.tsv"  # where write() puts the new file first
    leftover.parent.mkdir()
    leftover.write_text("commit\tval_bpb")
    assert run(repo, "baseline")["status"] == "keep"


# -- failures ----------------------------------------------------------------------------------------
def test_fail_line_is_a_crash_with_that_line_as_cause(repo):
    run(repo, "baseline")
    train = "import sys\nprint('step 00003 | loss: nan')\nprint('FAIL: loss is nan at step 3; the run diverged')\nsys.exit(1)\n"
    row = run(repo, "diverges", train)
    assert (row["status"], row["cause"]) == ("crash", "FAIL: loss is nan at step 3; the run diverged")
    assert results_tsv(repo)[-1][1:4] == ["0.000000", "0.0", "crash"]


def test_hanging_train_is_killed_at_the_timeout_with_no_process_left(repo, tmp_path, monkeypatch):
    monkeypatch.setattr(executor, "KILL_GRACE", 1.0)
    baseline = run(repo, "baseline")
    pid_file = tmp_path / "pids"
    started = time.time()
    row = run(repo, "hangs", hanging_train(pid_file), timeout=2)
    assert time.time() - started < 15
    assert row["status"] == "timeout" and row["cause"] == "timeout: killed after 2 s" and row["timeout_s"] == 2
    leader, child = map(int, pid_file.read_text().split())
    assert live_group_members(leader) == [] and child not in live_group_members(leader)
    assert not Path(f"/proc/{child}").exists() or Path(f"/proc/{child}/stat").read_text().split()[2] == "Z"
    assert git(repo, "rev-parse", "HEAD") == baseline["commit_sha"]
    assert results_tsv(repo)[-1][3:] == ["crash", "hangs [timeout]"]


def test_a_run_of_the_kept_train_py_is_a_repeat_never_kept_however_lucky(repo):
    """Nothing changed since the best: a lower val_bpb (here on seed 7) is a lucky draw, not a gain; the
    run adds to the kept program's mean instead."""
    lucky_on_7 = fake_train(1.0).replace('print("val_bpb:          1.000000")', 'print("val_bpb:          " + (\
        "0.500000" if os.environ.get("AUTORESEARCH_SEED") == "7" else "1.000000"))')
    baseline = run(repo, "baseline", lucky_on_7)
    row = run(repo, "again, unchanged", seed=7)
    assert row["val_bpb"] == 0.5 and row["status"] == "discard" and row["commit_sha"] == baseline["commit_sha"]
    assert row["cause"] == f"a repeat of {baseline['commit_sha'][:7]}'s train.py: never kept, it measures the noise"
    assert Ledger(repo=repo).reference("t") == 0.75


def test_a_profile_typo_is_one_line_saying_error_once(repo):
    result = cli(repo, "run", "-m", "baseline", env={"AUTORESEARCH_PROFILE": "smok"})
    assert result.returncode == 2 and result.stderr.count("error") == 1, result.stderr
    assert result.stderr.startswith("error: cannot read the rules from constants.py: unknown profile 'smok'")


def on_gpus(*gpus):
    """A train.py body whose children hold a context on each of `gpus` (the stand-in nvidia-smi lists a
    process started with STANDIN_GPU=i on GPU i; "0,1": one process on both) for two seconds."""
    return ("import subprocess, time\n"
            f"children = [subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(2)'], "
            f"env={{**os.environ, 'STANDIN_GPU': str(gpu)}}) for gpu in {list(gpus)!r}]\n"
            "[child.wait() for child in children]\n")


@pytest.fixture
def two_gpus(monkeypatch):
    """A machine of two GPUs as far as the harness can tell: the stand-in nvidia-smi, sampled often."""
    monkeypatch.setenv("PATH", f"{Path(__file__).parent / 'standins'}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setattr(sandbox, "gpu_count", lambda: 2)
    monkeypatch.setattr(executor, "GPU_SAMPLE_S", 0.3)


def test_a_run_whose_processes_hold_two_gpus_is_invalid(repo, two_gpus):
    """Every GPU's device node is in the sandbox and CUDA_VISIBLE_DEVICES is the run's to change: one
    that trains on a second GPU as well has twice the compute the rules give it."""
    run(repo, "baseline", fake_train(1.0, on_gpus(0)))
    row = run(repo, "data parallel on two GPUs", fake_train(0.5, on_gpus(0, 1)))
    assert row["status"] == "invalid" and row["cause"] == "its processes held 2 GPUs at once: an experiment has one"
    row = run(repo, "one process, the model split over two GPUs", fake_train(0.5, on_gpus("0,1")))
    assert row["status"] == "invalid" and row["cause"] == "its processes held 2 GPUs at once: an experiment has one"


def test_a_run_that_takes_a_second_gpu_in_short_bursts_is_caught(repo, two_gpus):
    """An attack on the sampling: the second GPU held for half a second at a time, let go in between,
    while the first is held throughout; the looks come at random, so the bursts are seen."""
    bursts = ("import subprocess, time\n"
              "main = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(4)'], "
              "env={**os.environ, 'STANDIN_GPU': '0'})\n"
              "for _ in range(4):\n"
              "    subprocess.run([sys.executable, '-c', 'import time; time.sleep(0.5)'], "
              "env={**os.environ, 'STANDIN_GPU': '1'})\n"
              "    time.sleep(0.4)\n"
              "main.wait()\n")
    run(repo, "baseline", fake_train(1.0, on_gpus(0)))
    row = run(repo, "a second GPU in bursts", fake_train(0.5, bursts))
    assert row["status"] == "invalid" and row["cause"] == "its processes held 2 GPUs at once: an experiment has one"


def test_a_run_on_one_gpu_of_several_is_judged_as_usual(repo, two_gpus):
    run(repo, "baseline", fake_train(1.0, on_gpus(0)))
    assert run(repo, "on its own GPU", fake_train(0.5, on_gpus(1)))["status"] == "keep"


def test_default_timeout_is_twice_the_budget_plus_a_margin(repo, short_budget):
    row = run(repo, "baseline")
    assert row["timeout_s"] == 2 * short_budget + runner.TIMEOUT_MARGIN and row["time_budget"] == short_budget


# -- integrity -----------------------------------------------------------------------------------------
def test_a_committed_edit_to_prepare_is_invalid_and_reverted(repo):
    baseline = run(repo, "baseline")
    prepare = (repo / "prepare.py").read_text()
    (repo / "prepare.py").write_text(prepare + "\nEVAL_TOKENS = 1\n")
    (repo / "train.py").write_text(fake_train(0.5))
    git(repo, "commit", "-qam", "shrink the eval")
    row = run(repo, "shrink the eval")
    assert row["status"] == "invalid" and row["cause"] == "changed files other than train.py: prepare.py"
    assert row["log_path"] is None and row["val_bpb"] is None  # never ran
    assert git(repo, "rev-parse", "HEAD") == baseline["commit_sha"] and git(repo, "status", "--porcelain") == ""
    assert (repo / "prepare.py").read_text() == prepare
    assert "+EVAL_TOKENS = 1" in git(repo, "show", f"refs/autoresearch/t/{row['commit_sha'][:7]}")
    assert results_tsv(repo)[-1][3:] == ["crash", "shrink the eval [invalid]"]
    assert Ledger(repo=repo).best("t") == 1.0


def test_an_uncommitted_edit_to_prepare_is_refused_and_left_in_place(repo):
    baseline = run(repo, "baseline")
    edited = (repo / "prepare.py").read_text() + "\nEVAL_TOKENS = 1\n"
    (repo / "prepare.py").write_text(edited)
    (repo / "train.py").write_text(fake_train(0.5))
    with pytest.raises(runner.RunError, match=r"other than train.py: prepare.py \(modified\);"):
        run(repo, "shrink the eval")
    assert [r["id"] for r in Ledger(repo=repo).experiments()] == [baseline["id"]]
    assert git(repo, "rev-parse", "HEAD") == baseline["commit_sha"]
    assert (repo / "prepare.py").read_text() == edited and (repo / "train.py").read_text() == fake_train(0.5)
    assert "prepare.py (modified)" in Ledger(repo=repo).events("t")[-1]["message"]


def test_an_untracked_file_is_refused_and_left_in_place(repo):
    run(repo, "baseline")
    (repo / "notes.txt").write_text("my notes\n")
    (repo / "train.py").write_text(fake_train(0.5))
    result = cli(repo, "run", "-m", "halve the batch")
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.startswith("error: uncommitted changes other than train.py: notes.txt (untracked);")
    assert len(result.stderr.splitlines()) == 1
    assert (repo / "notes.txt").read_text() == "my notes\n" and (repo / "train.py").read_text() == fake_train(0.5)
    assert len(Ledger(repo=repo).experiments()) == 1


def test_a_committed_new_file_is_invalid_and_removed(repo):
    run(repo, "baseline")
    (repo / "helper.py").write_text("SECRET = 1\n")
    git(repo, "add", "helper.py")
    git(repo, "commit", "-qm", "helper module")
    row = run(repo, "helper module")
    assert row["status"] == "invalid" and "helper.py" in row["cause"] and not (repo / "helper.py").exists()
    assert "SECRET = 1" in git(repo, "show", f"{row['commit_sha']}:helper.py")


def test_harness_outputs_do_not_count_as_changes_even_when_not_ignored(repo):
    (repo / ".gitignore").unlink()
    git(repo, "commit", "-qam", "no .gitignore")
    assert run(repo, "baseline")["status"] == "keep"
    assert run(repo, "again")["status"] == "discard"  # run.log, results.tsv, .autoresearch/ exist now
    assert "run.log" not in git(repo, "ls-files")


def test_run_that_edits_a_tracked_file_is_invalid(repo):
    baseline = run(repo, "baseline")
    prepare = (repo / "prepare.py").read_text()
    body = f"with open({str(repo / 'prepare.py')!r}, 'a') as f:\n    f.write('# patched at run time\\n')\n"
    row = run(repo, "patches prepare at run time", fake_train(0.5, body))  # unsandboxed: the stand-in executor
    assert row["status"] == "invalid" and row["cause"] == "the run changed files in the checkout: prepare.py"
    assert (repo / "prepare.py").read_text() == prepare and git(repo, "rev-parse", "HEAD") == baseline["commit_sha"]


def test_data_changed_since_the_campaign_started_is_a_one_line_error_and_nothing_is_recorded(
        repo, monkeypatch, tmp_path, smoke_cache):
    import shutil
    cache = tmp_path / "cache"
    shutil.copytree(Path(smoke_cache) / "smoke", cache / "smoke")
    monkeypatch.setenv("AUTORESEARCH_CACHE", str(cache))
    run(repo, "baseline")
    manifest = json.loads((cache / "smoke" / "manifest.json").read_text())
    (cache / "smoke" / "manifest.json").write_text(json.dumps({**manifest, "source": "files:elsewhere"}))
    (repo / "train.py").write_text(fake_train(0.5))
    with pytest.raises(runner.RunError, match="is not the data campaign t started with"):
        runner.run_experiment(str(repo), "after the cache changed")
    assert len(Ledger(repo=repo).experiments()) == 1


def test_a_data_file_that_no_longer_matches_its_hash_is_a_one_line_error(repo, monkeypatch, tmp_path, smoke_cache):
    import shutil
    cache = tmp_path / "cache"
    shutil.copytree(Path(smoke_cache) / "smoke", cache / "smoke")
    monkeypatch.setenv("AUTORESEARCH_CACHE", str(cache))
    with open(cache / "smoke" / "train_tokens.npy", "r+b") as f:
        f.seek(-2, 2)
        f.write(b"\xff\xff")
    with pytest.raises(runner.RunError, match="train_tokens.npy does not match its sha256"):
        run(repo, "baseline")


def test_re_preparing_the_same_data_keeps_the_campaign_valid(repo, monkeypatch, tmp_path, smoke_cache):
    import shutil
    cache = tmp_path / "cache"
    shutil.copytree(Path(smoke_cache) / "smoke", cache / "smoke")
    monkeypatch.setenv("AUTORESEARCH_CACHE", str(cache))
    run(repo, "baseline")
    subprocess.run([sys.executable, str(ROOT / "prepare.py"), "--profile", "smoke"], check=True, capture_output=True)
    assert run(repo, "after prepare.py ran again", fake_train(0.5))["status"] == "keep"


# -- interruption and recovery -------------------------------------------------------------------------
def test_sigint_kills_training_records_crash_and_resets(repo, tmp_path):
    baseline = run(repo, "baseline")
    pid_file = tmp_path / "pids"
    (repo / "train.py").write_text(hanging_train(pid_file, ignore_sigterm=False))
    proc = subprocess.Popen([sys.executable, "-m", "autoresearch.cli", "run", "-m", "hangs"], cwd=repo,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    deadline = time.time() + 30
    while not pid_file.exists() or not pid_file.read_text():
        assert time.time() < deadline and proc.poll() is None
        time.sleep(0.1)
    running = Ledger(repo=repo).experiments(tag="t", status="running")
    assert len(running) == 1 and running[0]["log_path"] == str(repo / "run.log")
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    row = Ledger(repo=repo).experiment(running[0]["id"])
    assert row["status"] == "crash" and row["cause"] == "interrupted (SIGINT)"
    leader, child = map(int, pid_file.read_text().split())
    assert live_group_members(leader) == []
    assert git(repo, "rev-parse", "HEAD") == baseline["commit_sha"] and git(repo, "status", "--porcelain") == ""
    assert results_tsv(repo)[1:] == [[baseline["commit_sha"][:7], "1.000000", "1.5", "keep", "baseline"]]  # no result


def test_row_left_running_by_a_dead_runner_is_recorded_on_the_next_run(repo):
    baseline = run(repo, "baseline")
    (repo / "train.py").write_text(fake_train(0.8))
    git(repo, "commit", "-qam", "died mid-run")
    dead = git(repo, "rev-parse", "HEAD")
    ledger = Ledger(repo=repo)
    stale = ledger.start_experiment(tag="t", worktree=str(repo), commit_sha=dead,
                                    parent_commit=baseline["commit_sha"], description="died mid-run")
    row = run(repo, "next")
    assert ledger.experiment(stale)["status"] == "crash" and "interrupted" in ledger.experiment(stale)["cause"]
    assert row["parent_commit"] == baseline["commit_sha"] and row["commit_sha"] == baseline["commit_sha"]
    assert git(repo, "rev-parse", f"refs/autoresearch/t/{dead[:7]}") == dead


def test_training_left_behind_by_a_killed_runner_is_stopped_on_recovery(repo, tmp_path, monkeypatch):
    baseline = run(repo, "baseline")
    pid_file = tmp_path / "pids"
    (repo / "train.py").write_text(hanging_train(pid_file))  # ignores SIGTERM: needs the SIGKILL
    proc = subprocess.Popen([sys.executable, "-m", "autoresearch.cli", "run", "-m", "hangs"], cwd=repo,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    ledger = Ledger(repo=repo)
    deadline = time.time() + 30
    while not (pid_file.exists() and pid_file.read_text() and ledger.experiments(status="running")
               and ledger.experiments(status="running")[0]["pgid"]):
        assert time.time() < deadline and proc.poll() is None
        time.sleep(0.1)
    running = ledger.experiments(status="running")[0]
    leader, child = map(int, pid_file.read_text().split())
    assert running["pgid"] == leader and running["host"]
    proc.kill()  # kill -9: the runner's handlers never run
    proc.wait()
    try:
        assert sorted(live_group_members(leader)) == sorted([leader, child])  # the training outlives it
        monkeypatch.setattr(executor, "KILL_GRACE", 1.0)
        [row] = runner.recover(repo)
        assert live_group_members(leader) == []
    finally:  # never leave the stand-in behind, whatever failed
        if live_group_members(leader):
            os.killpg(leader, signal.SIGKILL)
    assert row["id"] == running["id"] and row["status"] == "crash" and row["cause"].startswith("interrupted")
    assert f"process group {leader}" in row["cause"]
    assert git(repo, "rev-parse", "HEAD") == baseline["commit_sha"] and git(repo, "status", "--porcelain") == ""


def test_recovery_leaves_alone_a_process_that_reused_the_recorded_pgid(repo, tmp_path):
    baseline = run(repo, "baseline")
    elsewhere = tmp_path / "elsewhere"  # a train.py too, but not this checkout's
    elsewhere.mkdir()
    (elsewhere / "train.py").write_text("import time; time.sleep(60)\n")
    other = subprocess.Popen([sys.executable, "train.py"], cwd=elsewhere, start_new_session=True)
    try:
        ledger = Ledger(repo=repo)
        stale = ledger.start_experiment(tag="t", worktree=str(repo), commit_sha=baseline["commit_sha"],
                                        parent_commit=baseline["commit_sha"], description="died mid-run",
                                        pgid=other.pid, host=runner.socket.gethostname())
        runner.recover(repo)
        assert ledger.experiment(stale)["status"] == "crash"
        assert other.poll() is None and live_group_members(other.pid) == [other.pid]
    finally:
        other.kill()
        other.wait()


# -- several checkouts -----------------------------------------------------------------------------------
def test_two_runs_in_two_worktrees_share_one_ledger(repo, tmp_path):
    run(repo, "baseline")
    git(repo, "checkout", "-q", "main")
    slow = fake_train(0.9, "import time\ntime.sleep(2)\n")
    worktrees = []
    for name in ("a", "b"):
        path = tmp_path / f"wt-{name}"
        git(repo, "worktree", "add", "-q", "-b", f"autoresearch/{name}", str(path), "autoresearch/t")
        (path / "train.py").write_text(slow)
        worktrees.append(path)
    procs = [subprocess.Popen([sys.executable, "-m", "autoresearch.cli", "run", "-m", f"slow in {p.name}"], cwd=p,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(ROOT)}) for p in worktrees]
    for proc in procs:
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
    rows = {r["tag"]: r for r in Ledger(repo=repo).experiments() if r["tag"] in ("a", "b")}
    assert set(rows) == {"a", "b"} and all(r["status"] == "keep" for r in rows.values())
    assert rows["a"]["worktree"] == str(tmp_path / "wt-a") and rows["b"]["worktree"] == str(tmp_path / "wt-b")
    assert rows["a"]["started_at"] < rows["b"]["ended_at"] and rows["b"]["started_at"] < rows["a"]["ended_at"]
    for path in worktrees:
        assert len(results_tsv(path)) == 2 and not (path / ".autoresearch").exists()
    assert (repo / ".autoresearch" / "ledger.sqlite").exists()


def test_second_run_in_the_same_checkout_is_refused(repo, tmp_path):
    pid_file = tmp_path / "pids"
    (repo / "train.py").write_text(hanging_train(pid_file, ignore_sigterm=False))
    proc = subprocess.Popen([sys.executable, "-m", "autoresearch.cli", "run", "-m", "hangs", "--timeout", "20"],
                            cwd=repo, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        deadline = time.time() + 30
        while not pid_file.exists() or not pid_file.read_text():
            assert time.time() < deadline and proc.poll() is None
            time.sleep(0.1)
        second = cli(repo, "run", "-m", "meanwhile")
        assert second.returncode == 2 and "an experiment (pid " in second.stderr
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
    assert proc.returncode == 143  # 128 + SIGTERM


# -- user mistakes ---------------------------------------------------------------------------------------
def test_not_on_a_campaign_branch_is_a_one_line_error(repo):
    git(repo, "checkout", "-q", "main")
    result = cli(repo, "run", "-m", "x")
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    assert "not on a campaign branch (current: main)" in result.stderr
    assert "git checkout -b autoresearch/" in result.stderr
    with pytest.raises(runner.RunError):
        runner.campaign_tag(repo)
    assert not (repo / ".autoresearch").exists()


def test_campaign_tag_comes_from_the_branch(repo):
    assert runner.campaign_tag(repo) == "t"


def test_unprepared_profile_is_a_one_line_error(repo, tmp_path):
    result = cli(repo, "run", "-m", "x", env={"AUTORESEARCH_CACHE": str(tmp_path / "empty")})
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    assert "python prepare.py --profile smoke" in result.stderr
    assert Ledger(repo=repo).experiments() == []


def test_missing_description_is_refused(repo):
    assert cli(repo, "run").returncode == 2
    assert cli(repo, "run", "-m", "  ").returncode == 2


def test_run_prints_a_summary_and_exits_zero_even_for_a_discard(repo):
    assert cli(repo, "run", "-m", "baseline").returncode == 0
    (repo / "train.py").write_text(fake_train(1.5))
    result = cli(repo, "run", "-m", "worse")
    assert result.returncode == 0
    last = result.stdout.strip().splitlines()
    assert last[-2].startswith("discard") and "val_bpb 1.500000" in last[-2] and "delta +0.500000" in last[-2]
    assert "refs/autoresearch/t/" in last[-1] and "best 1.000000" in last[-1]
    log = json.loads(cli(repo, "log", "--format", "json").stdout)
    assert [(i["status"], i["description"], i["proposer"]) for i in log] == \
        [("keep", "baseline", "manual"), ("discard", "worse", "manual")]


def test_run_exits_1_when_the_experiment_crashed(repo):
    assert cli(repo, "run", "-m", "baseline").returncode == 0
    (repo / "train.py").write_text(fake_train(0.5, body="raise SystemExit('boom')"))
    result = cli(repo, "run", "-m", "crashes")
    assert result.returncode == 1, result.stderr
    assert result.stdout.strip().splitlines()[-2].startswith("crash")


# -- the progress display of a running experiment -----------------------------------------------------
def stepping_train(seconds, val_bpb=0.9):
    """A train.py that prints a long step line every 0.2 s for `seconds`, then the summary block."""
    return fake_train(val_bpb, body=f"""\
        import time
        for step in range({int(seconds * 5)}):
            print(f"step {{step:05d}} ({{step:.1f}}%) | loss: 5.000000 | " + "x" * 150 + " | remaining: 9s", flush=True)
            time.sleep(0.2)
        """)


def test_progress_off_a_terminal_is_a_plain_line_every_few_seconds(repo, monkeypatch, capsys):
    run(repo, "baseline")
    monkeypatch.setattr(runner, "PROGRESS_EVERY", 1.0)
    capsys.readouterr()
    run(repo, "steps", stepping_train(4), progress=True)
    err = capsys.readouterr().err
    assert "\r" not in err and "\x1b" not in err
    lines = [line for line in err.splitlines() if line.startswith("[")]
    assert 2 <= len(lines) <= 8, err
    assert all(len(line) <= 100 for line in lines), lines
    assert all(re.match(r"\[ *\d+s/\d+s\] step \d{5} ", line) for line in lines), lines


def test_progress_on_a_terminal_is_one_line_rewritten_within_its_width(repo, monkeypatch, capsys):
    run(repo, "baseline")
    monkeypatch.setenv("COLUMNS", "60")
    leader, follower = pty.openpty()
    os.set_blocking(leader, False)
    terminal = open(follower, "w")
    monkeypatch.setattr(sys, "stderr", terminal)
    captured = []

    def drain():
        try:
            while True:
                captured.append(os.read(leader, 65536))
        except (BlockingIOError, OSError):
            pass

    try:
        run(repo, "steps", stepping_train(3), progress=True)
        terminal.flush()
        drain()
    finally:
        monkeypatch.undo()
        terminal.close()
        os.close(leader)
    screen = b"".join(captured).decode()
    redraws = [part for part in screen.replace("\r\n", "\n").split("\r") if "step " in part]
    assert len(redraws) >= 2, screen
    assert all(len(part.split("\x1b[K")[0]) < 60 for part in redraws), redraws
    assert all(part.split("\n")[0].endswith("\x1b[K") for part in redraws), redraws
    assert screen.replace("\r\n", "\n").endswith("\n")  # the next output starts on a line of its own


def test_bytecode_planted_beside_constants_py_does_not_change_the_rules(repo):
    """constants.py unchanged, and a .pyc in its (git-ignored) __pycache__, stamped with the source's
    size and time, that says the budget is 3000 s: the harness reads the source."""
    import importlib.util
    import py_compile
    honest = runner.read_rules(repo)
    source = repo / "constants.py"
    forged = repo / "forged_constants.py"
    forged.write_text(source.read_text() + "\nTIME_BUDGET = 3000.0\n")
    planted = Path(importlib.util.cache_from_source(str(source)))
    planted.parent.mkdir(exist_ok=True)
    py_compile.compile(str(forged), cfile=str(planted), doraise=True)
    forged.unlink()
    header = bytearray(planted.read_bytes())  # the source's stamp: what Python checks before it trusts a .pyc
    st = source.stat()
    header[8:12], header[12:16] = int(st.st_mtime).to_bytes(4, "little"), (st.st_size & 0xFFFFFFFF).to_bytes(4, "little")
    planted.write_bytes(bytes(header))
    probe = "import sys; sys.path.insert(0, '.'); import constants; print(constants.TIME_BUDGET)"
    assert subprocess.run([sys.executable, "-c", probe], cwd=repo, capture_output=True, text=True).stdout.strip() \
        == "3000.0"  # the plant works on a plain import
    assert runner.read_rules(repo) == honest and honest["time_budget"] != 3000.0


def judged(training_seconds, measured=300.0, budget=300.0, others=None, handoff=None):
    """The judgement of a CPU run that handed over a model scored 1.0 and printed it, and the training
    time given; measured: the harness's clock from the first batch to the export; handoff: from launch
    to the hand-off (by default 8 s more: start-up and export); others: the share of the CPUs other
    processes took meanwhile."""
    outcome = executor.Outcome(returncode=0, handed_over=True, val_bpb=1.0, training_s=measured,
                               handoff_s=measured + 8.0 if handoff is None else handoff,
                               slack_s=executor.allowances(budget, gpu=False).slack,
                               outside_s=executor.allowances(budget, gpu=False).outside, cpu_share_others=others)
    claimed = {"val_bpb": 1.0} if training_seconds is None else {"val_bpb": 1.0, "training_seconds": training_seconds}
    return runner.judge_outcome(outcome, claimed, "", budget)


def test_a_run_that_trained_its_budget_is_judged_on_its_val_bpb():
    assert judged(300.4, measured=310.0) == ("keep", None)


def test_a_run_that_prints_no_training_time_is_invalid():
    """Without it nothing compares the training with the budget but the stop at budget + grace."""
    status, cause = judged(None)
    assert status == "invalid" and cause.startswith("printed no training_seconds line")


def test_a_run_that_says_it_trained_past_the_budget_is_invalid():
    """Its own count, however honest, is past the budget by more than a last step."""
    status, cause = judged(330.0, measured=335.0)
    assert (status, cause) == ("invalid", "trained 330 s by its own count: past the budget of 300 s")


def test_training_hidden_outside_the_claimed_time_is_invalid():
    """The claim and the clock from first batch to export agree, but the hand-off came 40 s after them:
    training in the start-up (before telling the harness) or in the export window (after telling it
    the export started) counts, wherever the run put it."""
    status, cause = judged(300.0, measured=301.0, handoff=340.0)
    assert status == "invalid" and cause.startswith("handed its model over 340.0 s after launch for 300 s of "
                                                    "training by its own count: more than 26.0 s outside"), cause
    assert cause.endswith("; measured: training 301.0 s)"), cause  # where the time went, as far as known


def test_on_a_busy_machine_the_time_outside_training_may_be_longer():
    """Others took 40% of the CPUs: start-up and export ran slower too."""
    assert judged(300.0, measured=301.0, handoff=340.0, others=0.4) == ("keep", None)


def test_a_module_planted_in_the_checkout_is_not_what_constants_py_imports(repo, tmp_path, monkeypatch):
    """With no profile chosen, constants.py imports torch to pick one: a torch.py in the checkout must not
    be that torch (it would run in the harness and choose the rules)."""
    ran = tmp_path / "the-planted-module-ran"
    (repo / "torch.py").write_text(f"open({str(ran)!r}, 'w').close()\n")
    monkeypatch.delenv("AUTORESEARCH_PROFILE", raising=False)
    monkeypatch.setenv("AUTORESEARCH_CACHE", str(tmp_path / "empty-cache"))  # no last_profile either
    rules = runner.read_rules(repo)
    assert not ran.exists() and rules["profile"] in ("cpu", "gpu")


def test_on_a_busy_machine_a_longer_last_step_is_allowed():
    """Others took a fifth of the CPUs: the last step may run a quarter longer past the budget."""
    assert judged(318.0, measured=320.0, others=0.2) == ("keep", None)
    assert judged(318.0, measured=320.0)[0] == "invalid"


def test_a_starved_run_past_the_budget_is_judged_but_never_kept():
    """Others took half of the CPUs: one step took 16 s of a 6 s budget (seen on a loaded test machine).
    The run is judged, but its extra training never wins a keep: a run can make the machine look busy
    (kernel work for its own I/O counts as others') to train past its budget."""
    status, cause = judged(16.5, measured=20.0, budget=6.0, others=0.53)
    assert status == "discard" and cause == ("starved past its budget: trained 16.5 s by its own count, the budget "
                                             "is 6 s (other processes took 53% of the CPUs during training); not "
                                             "kept, re-run it on a quieter machine")


def test_a_starved_baseline_past_the_budget_still_sets_the_bar(repo, monkeypatch):
    """The campaign's own train.py, starved and over its budget: kept, as the bar to beat (its row says it
    was starved); a run trained longer only sets the bar higher."""
    starved = "trained 9 s by its own count while starved"
    monkeypatch.setattr(runner, "judge_outcome", lambda *args: ("discard", starved))
    row = run(repo, "baseline")
    assert row["status"] == "keep" and row["cause"] is None
    (repo / "train.py").write_text(fake_train(0.5))
    row = run(repo, "better, but starved and over budget")
    assert row["status"] == "discard" and row["cause"] == starved


def test_what_the_disks_lose_counts_against_each_of_the_runs_in_flight_together():
    """A swarm's runs share the disks: one run's legal 16 GiB must not stop its sibling, whose own folders
    hold little; alone, a run whose disk lost that much (deleted files it holds open) is stopped."""
    limit = executor.WRITE_LIMIT
    assert executor.over_write_limits(size=1 << 20, files=10, lost=limit + (1 << 30), in_flight=1)
    assert not executor.over_write_limits(size=1 << 20, files=10, lost=limit + (1 << 30), in_flight=2)
    assert executor.over_write_limits(size=limit + 1, files=10, lost=0, in_flight=2)
    assert executor.over_write_limits(size=0, files=executor.FILE_LIMIT + 1, lost=0, in_flight=2)


def test_a_commit_kept_by_hand_then_a_run_is_refused_instead_of_taken_in(repo):
    """The manual flow mixed with `run`: a change committed and kept by hand, then another edited and run:
    the run would carry both under one description, and a discard would reset the first away."""
    baseline = run(repo, "baseline")
    (repo / "train.py").write_text(fake_train(0.9))
    git(repo, "commit", "-qam", "manual: kept by hand")
    kept_by_hand = git(repo, "rev-parse", "HEAD")
    (repo / "train.py").write_text(fake_train(0.8))
    result = cli(repo, "run", "-m", "scalar lr 0.3")
    assert result.returncode == 2 and len(result.stderr.splitlines()) == 1, result.stderr
    assert result.stderr.startswith(f"error: 1 commit(s) since the campaign's best {baseline['commit_sha'][:7]} "
                                    f"that no experiment recorded ({kept_by_hand[:7]})")
    assert git(repo, "rev-parse", "HEAD") == kept_by_hand and (repo / "train.py").read_text() == fake_train(0.8)
    assert len(Ledger(repo=repo).experiments()) == 1


def test_a_committed_change_then_run_is_the_experiment(repo):
    """The reference's own order, `git commit` then the run: that one commit is the experiment."""
    run(repo, "baseline")
    (repo / "train.py").write_text(fake_train(0.9))
    git(repo, "commit", "-qam", "lower it")
    row = run(repo, "lower it")
    assert row["status"] == "keep" and row["commit_sha"] == git(repo, "rev-parse", "HEAD")


def test_a_run_after_the_last_keep_was_reset_away_by_hand_is_refused(repo):
    baseline = run(repo, "baseline")
    kept = run(repo, "lower it", fake_train(0.9))
    git(repo, "reset", "-q", "--hard", baseline["commit_sha"])
    (repo / "train.py").write_text(fake_train(0.8))
    with pytest.raises(runner.RunError, match=f"last kept commit {kept['commit_sha'][:7]} is not on this branch"):
        run(repo, "after a reset by hand")
