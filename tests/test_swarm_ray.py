"""
`autoresearch swarm --backend ray` on a real local Ray cluster (started by the swarm itself): the
campaign runs as Ray tasks that ship the spec, a Ray worker killed under an experiment puts it back
in the queue, and a killed driver's campaign resumes. The stand-in train.py of test_swarm.py.
"""

import os
import signal
from pathlib import Path

import pytest

from autoresearch import sandbox
from autoresearch.ledger import Ledger
from test_swarm import alive, assert_consistent, clean_up_group, cli, hang_env, repo, rows, start, wait_for  # noqa: F401 (repo: the fixture)

pytest.importorskip("ray")

ARGS = ["--tag", "t", "--backend", "ray", "--workers", "2", "--max-experiments", "4", "--baseline-repeats", "1"]


def parent_of(pid):
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def run_pids(tmp_path):
    path = tmp_path / "runs"
    return [int(p) for p in path.read_text().split()] if path.exists() else []


def kill_all(pids):
    for pid in pids:
        if alive(pid):
            os.kill(pid, signal.SIGKILL)


def test_a_ray_swarm_runs_the_campaign_as_tasks_on_a_local_cluster(repo):
    proc = cli(repo, *ARGS, timeout=300)
    assert proc.returncode == 0, proc.stderr
    experiments = assert_consistent(repo)
    assert len(experiments) == 4
    assert {r["worker"] for r in experiments[1:]} <= {"ray1", "ray2"} and all(r["host"] for r in experiments)
    assert all(r["status"] in ("keep", "discard") for r in experiments), [r["cause"] for r in experiments]


def test_the_real_train_py_runs_sandboxed_and_trusted_in_ray_tasks(campaign_repo, monkeypatch):
    if sandbox.bwrap_problem():
        pytest.skip(sandbox.bwrap_problem())
    monkeypatch.setenv("AUTORESEARCH_TIME_BUDGET", "3")
    proc = cli(campaign_repo, "--tag", "t", "--backend", "ray", "--workers", "2", "--max-experiments", "3",
               "--baseline-repeats", "1", timeout=600)
    assert proc.returncode == 0, proc.stderr
    experiments = assert_consistent(campaign_repo)
    assert all(r["status"] in ("keep", "discard") for r in experiments), [r["cause"] for r in experiments]
    assert all(r["sandbox"] == "bwrap" and abs(r["val_bpb"] - r["claimed_val_bpb"]) < 2e-6 and r["eval_s"] > 0
               for r in experiments)


def test_a_ray_worker_killed_under_an_experiment_puts_it_back_in_the_queue(repo, tmp_path):
    proc = start(repo, *ARGS, env=hang_env(tmp_path, 2, 2))  # only the 2nd run hangs
    try:
        wait_for(lambda: len(run_pids(tmp_path)) >= 2, proc=proc)
        hung = run_pids(tmp_path)[1]
        os.kill(parent_of(hung), signal.SIGKILL)  # the Ray worker process running the task
        os.kill(hung, signal.SIGKILL)  # (sandboxed, the training would die with it)
        out, err = proc.communicate(timeout=300)
    finally:
        kill_all(run_pids(tmp_path))
    assert proc.returncode == 0, err
    experiments = assert_consistent(repo)
    assert len(experiments) == 4 and all(r["status"] in ("keep", "discard") for r in experiments)
    lost = [e for e in Ledger(repo=repo).events(tag="t") if e["kind"] == "lost"]
    assert len(lost) == 1 and "running it again" in lost[0]["message"]


def test_a_killed_ray_swarm_resumes_its_campaign_with_nothing_lost_or_twice(repo, tmp_path):
    first = start(repo, *ARGS, env=hang_env(tmp_path, 2))
    try:
        wait_for(lambda: sum(r["status"] == "running" for r in rows(repo)) == 2 and len(run_pids(tmp_path)) == 3,
                 proc=first)
        first.kill()
        first.wait()
        kill_all(run_pids(tmp_path))
        again = cli(repo, *ARGS, timeout=300)
    finally:
        kill_all(run_pids(tmp_path))
        clean_up_group(first)  # the killed driver's own Ray processes
    assert again.returncode == 0, again.stderr
    experiments = assert_consistent(repo)
    cut = [r for r in experiments if r["cause"] and r["cause"].startswith("interrupted")]
    assert len(cut) == 2
    assert sorted(r["retry_of"] for r in experiments if r.get("retry_of")) == [r["id"] for r in cut]


def test_ctrl_c_stops_a_ray_swarm_with_130_and_no_traceback(repo, tmp_path):
    """The loop's stop, raised by the signal handler inside Ray's compiled wait, comes out of Ray wrapped
    in a SystemError: the swarm must still stop as a Ctrl-C does."""
    first = start(repo, *ARGS, env=hang_env(tmp_path, 2))
    try:
        wait_for(lambda: sum(r["status"] == "running" for r in rows(repo)) == 2 and len(run_pids(tmp_path)) == 3,
                 proc=first)
        first.send_signal(signal.SIGINT)
        out, err = first.communicate(timeout=120)
    finally:
        kill_all(run_pids(tmp_path))
        clean_up_group(first)
    assert first.returncode == 130 and "Traceback" not in err, err
    assert [(r["status"], r["cause"]) for r in rows(repo)[1:]] == [("crash", "interrupted (SIGINT)")] * 2
