"""The `autoresearch` command as a whole: --version, --help, the exit codes and the error line that
every verb shares, and a closed output pipe (`| head -1`)."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import autoresearch
from test_report import exp, git_repo, write_ledger

ROOT = Path(__file__).resolve().parents[1]


def cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "autoresearch.cli", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})


def test_version_prints_the_package_version(tmp_path):
    result = cli("--version", cwd=tmp_path)
    assert result.returncode == 0
    assert result.stdout.strip() == f"autoresearch {autoresearch.__version__}"


def test_help_documents_the_exit_codes(tmp_path):
    result = cli("--help", cwd=tmp_path)
    assert result.returncode == 0
    epilog = result.stdout.split("exit codes", 1)[1]
    for code in ("0", "1", "2", "130", "143"):
        assert re.search(rf"^\s+{code}\b", epilog, re.M), code
    assert max(len(line) for line in result.stdout.splitlines()) <= 100


@pytest.mark.parametrize("verb", [["log"], ["log", "--format", "json"], ["status"], ["report"]])
def test_no_ledger_is_exit_2_and_the_same_one_line_error_for_every_verb(tmp_path, verb):
    repo = git_repo(tmp_path / "repo")
    result = cli(*verb, cwd=repo)
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: no ledger at "), lines
    assert "autoresearch run" in lines[0] and "autoresearch loop" in lines[0]
    assert not (repo / ".autoresearch" / "ledger.sqlite").exists()


@pytest.mark.parametrize("verb", [["log", "--tag", "nope"], ["status", "--interval", "0"], ["report", "--tag", "nope"],
                                  ["status", "--json", "--watch"]])
def test_a_usage_error_is_exit_2_and_one_line_with_the_error_prefix(tmp_path, verb):
    repo = git_repo(tmp_path / "repo")
    write_ledger(repo, [exp("keep", 1.5, "baseline", t=0)])
    result = cli(*verb, cwd=repo)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines


@pytest.mark.parametrize("verb", [["log", "--format", "yaml"], ["frobnicate"], ["run"]])
def test_bad_flags_are_exit_2_with_argparse_usage(tmp_path, verb):
    result = cli(*verb, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.startswith("usage: autoresearch") and " error: " in result.stderr.splitlines()[-1]


@pytest.mark.parametrize("verb", [["log"], ["log", "--format", "json"], ["log", "--format", "tsv"], ["--help"]])
def test_a_closed_output_pipe_ends_the_command_quietly(tmp_path, verb):
    """`autoresearch log --format json | head -1`: no BrokenPipeError traceback, no 'Exception ignored'."""
    repo = git_repo(tmp_path / "repo")
    write_ledger(repo, [exp("keep", 1.5 - i / 1000, f"experiment {i} " + "x" * 200, t=i) for i in range(400)])
    command = " ".join([f"'{sys.executable}'", "-m", "autoresearch.cli", *verb])
    result = subprocess.run(["bash", "-c", f"set -o pipefail; {command} | head -1"], cwd=repo, capture_output=True,
                            text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.stderr == ""
    assert len(result.stdout.splitlines()) == 1
    assert result.returncode in (0, 141)  # 141: 128 + SIGPIPE, what a C program's death by SIGPIPE shows


@pytest.mark.parametrize("verb", [["log"], ["run"], ["status", "--watch"], ["loop"], ["report"], ["swarm"]])
def test_version_after_any_subcommand_prints_the_version(tmp_path, verb):
    """`autoresearch run --version`: the version and exit 0, not a missing -m or an unrecognized flag."""
    result = cli(*verb, "--version", cwd=tmp_path)
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout.strip() == f"autoresearch {autoresearch.__version__}"
