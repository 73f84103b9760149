"""spawn.sh: coding agents in tmux, one git worktree and branch per GPU, a nudger, stop keeps the branches."""

import os
import shutil
import subprocess
import time

import pytest

from conftest import ROOT

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None and os.environ.get("CI") != "true",
                                reason="tmux is not installed")

FAKE_CLAUDE = """#!/usr/bin/env bash
# behaves like an interactive coding agent: records how it was started, then waits at a prompt
echo "args: $*" >> "$AGENT_LOG"
echo "cwd: $PWD gpu: $CUDA_VISIBLE_DEVICES worker: $AUTORESEARCH_WORKER" >> "$AGENT_LOG"
echo "cache: ${AUTORESEARCH_CACHE:-}" >> "$AGENT_LOG"
while true; do
    printf '> '
    IFS= read -r line || exit 0
    echo "got: $line" >> "$AGENT_LOG"
done
"""


@pytest.fixture
def spawn_repo(campaign_repo, tmp_path, monkeypatch):
    shutil.copy(ROOT / "spawn.sh", campaign_repo / "spawn.sh")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "claude").write_text(FAKE_CLAUDE)
    (bin_dir / "claude").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.setenv("AGENT_LOG", str(tmp_path / "agents.log"))
    monkeypatch.setenv("WATCH_INTERVAL", "1")
    monkeypatch.setenv("TMUX_TMPDIR", str(tmp_path))  # a tmux server of our own
    yield campaign_repo
    subprocess.run(["tmux", "kill-server"], capture_output=True)


def spawn(repo, *args):
    return subprocess.run(["./spawn.sh", *args], cwd=repo, capture_output=True, text=True, timeout=60)


def wait_for(predicate, seconds=15):
    end = time.time() + seconds
    while time.time() < end:
        if predicate():
            return True
        time.sleep(0.2)
    return False


def test_launch_gives_each_agent_its_own_worktree_branch_and_gpu(spawn_repo, tmp_path):
    r = spawn(spawn_repo, "launch", "t1", "claude:0", "opus:1")
    assert r.returncode == 0, r.stderr
    log = tmp_path / "agents.log"
    assert wait_for(lambda: log.exists() and log.read_text().count("cwd:") == 2)
    text = log.read_text()
    assert f"cwd: {spawn_repo}/worktrees/gpu0 gpu: 0 worker: gpu0" in text
    assert f"cwd: {spawn_repo}/worktrees/gpu1 gpu: 1 worker: gpu1" in text
    assert ("args: --dangerously-skip-permissions Read program.md and follow the instructions. Your branch, "
            "autoresearch/t1-gpu0, is made and checked out here: skip making one.") in text
    assert "args: --dangerously-skip-permissions --model opus Read program.md" in text
    branches = subprocess.run(["git", "branch", "--list", "autoresearch/*"], cwd=spawn_repo,
                              capture_output=True, text=True).stdout
    assert "autoresearch/t1-gpu0" in branches and "autoresearch/t1-gpu1" in branches
    assert "autoresearch-t1: 2 agent pane(s)" in spawn(spawn_repo, "status").stdout


def test_an_idle_agent_is_nudged_to_keep_going(spawn_repo, tmp_path):
    assert spawn(spawn_repo, "launch", "t2", "claude:0").returncode == 0
    log = tmp_path / "agents.log"
    assert wait_for(lambda: log.exists() and "got: Keep going. Do not stop" in log.read_text(), seconds=20)


def test_stop_removes_the_worktrees_and_keeps_the_branches(spawn_repo):
    assert spawn(spawn_repo, "launch", "t3", "claude:0").returncode == 0
    r = spawn(spawn_repo, "stop", "t3")
    assert r.returncode == 0 and "killed tmux session autoresearch-t3" in r.stdout
    assert not (spawn_repo / "worktrees" / "gpu0").exists()
    assert subprocess.run(["git", "rev-parse", "--verify", "autoresearch/t3-gpu0"], cwd=spawn_repo,
                          capture_output=True).returncode == 0


@pytest.mark.parametrize("args, message", [
    (["launch", "t4", "gpt:0"], "unknown agent 'gpt'"),
    (["launch", "t4", "claude"], "'claude' is not <agent>:<gpu>"),
    (["launch", "bad tag", "claude:0"], "may only hold"),
    (["launch", "t4", "claude:5", "opus:5"], "GPU 5 is named twice"),
])
def test_bad_input_is_one_clear_line_and_creates_nothing(spawn_repo, args, message):
    r = spawn(spawn_repo, *args)
    assert r.returncode == 2 and message in r.stderr
    assert not (spawn_repo / "worktrees").exists()


def test_agents_get_the_callers_settings_from_a_tmux_server_started_before_them(spawn_repo, tmp_path,
                                                                              monkeypatch):
    """A tmux server keeps the environment it started with: the panes it opens later would miss the data
    cache (and the keys) the caller set since, and train against another cache."""
    subprocess.run(["tmux", "new-session", "-d", "-s", "earlier"], check=True)
    monkeypatch.setenv("AUTORESEARCH_CACHE", str(tmp_path / "my-cache"))
    assert spawn(spawn_repo, "launch", "t5", "claude:0").returncode == 0
    log = tmp_path / "agents.log"
    assert wait_for(lambda: log.exists() and "cache:" in log.read_text())
    assert f"cache: {tmp_path / 'my-cache'}" in log.read_text()


def test_help_is_the_scripts_own_description_and_exits_0(spawn_repo):
    r = spawn(spawn_repo, "--help")
    assert r.returncode == 0 and r.stdout.startswith("Launch several coding agents") and "set -e" not in r.stdout
