"""The SQLite ledger shared by all worktrees, and `autoresearch log`."""

import json
import multiprocessing
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from autoresearch import cli
from autoresearch.ledger import Ledger, LedgerError, ledger_path
from conftest import git

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def repo(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    git(repo, "config", "user.email", "t@example.com")
    git(repo, "config", "user.name", "t")
    (repo / "train.py").write_text("print('hi')\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "init")
    return repo


def add_rows(ledger):
    ledger.save_campaign(tag="a", branch="autoresearch/a", base_commit="1" * 40, profile="smoke")
    first = ledger.start_experiment(tag="a", commit_sha="a" * 40, description="baseline", proposer="manual")
    ledger.finish_experiment(first, status="keep", val_bpb=1.25, peak_vram_mb=2048.0)
    second = ledger.start_experiment(tag="a", commit_sha="b" * 40, description="tab\there\nnewline",
                                     proposer="search")
    ledger.finish_experiment(second, status="crash", cause="OOM: out of memory")
    third = ledger.start_experiment(tag="b", commit_sha="c" * 40, description="other tag", proposer="openai")
    ledger.finish_experiment(third, status="discard", val_bpb=1.5, peak_vram_mb=1024.0)
    return first, second, third


def test_ledger_lives_at_the_main_worktree_root_for_every_worktree(repo, tmp_path):
    git(repo, "worktree", "add", "-q", "-b", "autoresearch/w", str(tmp_path / "wt"))
    expected = str(repo / ".autoresearch" / "ledger.sqlite")
    assert ledger_path(repo) == expected
    assert ledger_path(tmp_path / "wt") == expected
    assert Ledger(repo=tmp_path / "wt").path == expected


def test_ledger_is_in_wal_mode(repo):
    ledger = Ledger(repo=repo)
    with sqlite3.connect(ledger.path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_started_experiment_is_running_until_finished(repo):
    ledger = Ledger(repo=repo)
    exp_id = ledger.start_experiment(tag="a", description="x", log_path="/tmp/run.log")
    row = ledger.experiment(exp_id)
    assert row["status"] == "running" and row["started_at"] > 0 and row["ended_at"] is None
    ledger.finish_experiment(exp_id, status="keep", val_bpb=1.0)
    row = ledger.experiment(exp_id)
    assert row["status"] == "keep" and row["val_bpb"] == 1.0 and row["ended_at"] >= row["started_at"]


def test_experiments_filter_by_tag_and_status_in_id_order(repo):
    ledger = Ledger(repo=repo)
    first, second, third = add_rows(ledger)
    assert [r["id"] for r in ledger.experiments()] == [first, second, third]
    assert [r["id"] for r in ledger.experiments(tag="a")] == [first, second]
    assert [r["id"] for r in ledger.experiments(status="crash")] == [second]
    assert [r["id"] for r in ledger.experiments(status=["keep", "discard"])] == [first, third]


def test_best_is_the_lowest_keep(repo):
    ledger = Ledger(repo=repo)
    assert ledger.best("a") is None
    add_rows(ledger)
    extra = ledger.start_experiment(tag="a", description="worse discard")
    ledger.finish_experiment(extra, status="discard", val_bpb=0.5)
    assert ledger.best("a") == 1.25


def test_the_reference_is_the_lowest_mean_of_a_kept_commits_unstarved_results(repo):
    ledger = Ledger(repo=repo)
    assert ledger.reference("a") is None

    def result(commit, status, val, **cols):
        exp = ledger.start_experiment(tag="a", commit_sha=commit, description=commit or "no commit")
        ledger.finish_experiment(exp, status=status, val_bpb=val, **cols)

    result("base", "keep", 1.30)                             # the baseline and its noise repeats
    result("base", "discard", 1.20, cause="baseline repeat on seed 43: measures the noise")
    result("base", "discard", 1.00, cause="starved: other processes took 60% of the CPUs")
    result("base", "discard", 1.50, starved=1, cause="baseline repeat on seed 44: measures the noise")
    result("other", "discard", 0.90)                         # never kept: not a reference
    assert ledger.reference("a") == pytest.approx(1.25)
    result("gain", "keep", 1.10)                             # a keep and its confirmation
    result("gain", "keep", 1.14)
    assert ledger.reference("a") == pytest.approx(1.12)
    assert ledger.best("a") == 1.10


def test_on_a_starved_machine_runs_thrown_away_to_be_run_again_never_set_the_reference(repo):
    """Every run starved: the two the loop threw away (and ran again) are no part of the bar; the run
    that counted is, and so are the noise repeats that counted."""
    ledger = Ledger(repo=repo)
    for status, val, cause in (("discard", 2.740, "starved: other processes took 60% of the CPUs; re-run"),
                               ("discard", 2.296, "starved: other processes took 55% of the CPUs; re-run"),
                               ("keep", 2.341, None),
                               ("discard", 2.300, "baseline repeat on seed 43: measures the noise")):
        exp = ledger.start_experiment(tag="a", commit_sha="base", description="baseline")
        ledger.finish_experiment(exp, status=status, val_bpb=val, starved=1, cause=cause)
    assert ledger.reference("a") == pytest.approx((2.341 + 2.300) / 2)


def test_a_kept_program_measured_only_on_a_starved_machine_still_sets_the_reference(repo):
    ledger = Ledger(repo=repo)
    exp = ledger.start_experiment(tag="a", commit_sha="base", description="baseline")
    ledger.finish_experiment(exp, status="keep", val_bpb=1.3, starved=1)
    assert ledger.reference("a") == 1.3


def test_a_kept_row_without_a_commit_is_a_reference_of_its_own(repo):
    ledger = Ledger(repo=repo)
    for commit, val in ((None, 1.3), (None, 1.1), ("c", 1.2)):
        exp = ledger.start_experiment(tag="a", commit_sha=commit, description="kept")
        ledger.finish_experiment(exp, status="keep", val_bpb=val)
    assert ledger.reference("a") == 1.1


def test_unknown_columns_are_rejected(repo):
    ledger = Ledger(repo=repo)
    with pytest.raises(ValueError, match="val_bpbb"):
        ledger.start_experiment(tag="a", val_bpbb=1.0)
    with pytest.raises(ValueError, match="colour"):
        ledger.save_campaign(tag="a", colour="red")


def test_save_campaign_updates_only_the_columns_given(repo):
    ledger = Ledger(repo=repo)
    ledger.save_campaign(tag="a", branch="autoresearch/a", base_commit="f" * 40, min_delta=0.001)
    ledger.save_campaign(tag="a", noise_std=0.002)
    campaign = ledger.campaign("a")
    assert campaign["base_commit"] == "f" * 40 and campaign["min_delta"] == 0.001
    assert campaign["noise_std"] == 0.002 and campaign["created_at"] > 0
    assert ledger.campaign("missing") is None


def test_tags_list_campaigns_and_tags_seen_only_in_experiments(repo):
    ledger = Ledger(repo=repo)
    add_rows(ledger)
    assert ledger.tags() == ["a", "b"]


def test_events_are_recorded_in_order(repo):
    ledger = Ledger(repo=repo)
    ledger.event("a", "start", "campaign starts", worker="w1")
    ledger.event("b", "keep", "#1 keep")
    assert [(e["tag"], e["kind"], e["worker"]) for e in ledger.events()] == [("a", "start", "w1"), ("b", "keep", None)]
    assert [e["message"] for e in ledger.events(tag="b")] == ["#1 keep"]


def _writer(path, worker, count):
    ledger = Ledger(path)
    for i in range(count):
        exp_id = ledger.start_experiment(tag="c", worker=worker, description=f"{worker}-{i}")
        ledger.event("c", "started", f"{worker}-{i}", worker=worker)
        ledger.finish_experiment(exp_id, status="discard", val_bpb=float(i))


def test_concurrent_writers_lose_nothing(repo):
    path = Ledger(repo=repo).path
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(path, f"w{n}", 25)) for n in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    rows = Ledger(path).experiments(tag="c")
    assert len(rows) == 100 and len({r["id"] for r in rows}) == 100
    assert all(r["status"] == "discard" for r in rows)
    assert sorted(r["description"] for r in rows) == sorted(f"w{n}-{i}" for n in range(4) for i in range(25))
    assert len(Ledger(path).events(tag="c")) == 100


def run_log(repo, monkeypatch, capsys, *args):
    monkeypatch.chdir(repo)
    code = cli.main(["log", *args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_log_json_has_the_contract_keys(repo, monkeypatch, capsys):
    add_rows(Ledger(repo=repo))
    code, out, _ = run_log(repo, monkeypatch, capsys, "--format", "json")
    items = json.loads(out)
    assert code == 0 and len(items) == 3
    assert {"tag", "commit", "status", "val_bpb", "description", "proposer"} <= set(items[0])
    assert (items[0]["tag"], items[0]["commit"], items[0]["status"], items[0]["val_bpb"]) == ("a", "aaaaaaa", "keep", 1.25)


def test_log_tag_filter(repo, monkeypatch, capsys):
    add_rows(Ledger(repo=repo))
    code, out, _ = run_log(repo, monkeypatch, capsys, "--tag", "b", "--format", "json")
    assert code == 0 and [i["description"] for i in json.loads(out)] == ["other tag"]


def test_log_tsv_starts_with_the_results_tsv_columns(repo, monkeypatch, capsys):
    add_rows(Ledger(repo=repo))
    code, out, _ = run_log(repo, monkeypatch, capsys, "--format", "tsv")
    lines = out.splitlines()
    assert code == 0 and lines[0].startswith("commit\tval_bpb\tmemory_gb\tstatus\tdescription\t")
    assert lines[1].split("\t")[:5] == ["aaaaaaa", "1.250000", "2.0", "keep", "baseline"]
    assert lines[2].split("\t")[:5] == ["bbbbbbb", "0.000000", "0.0", "crash", "tab here newline"]
    assert all(len(line.split("\t")) == len(lines[0].split("\t")) for line in lines)


def test_log_tsv_shows_timeout_and_invalid_as_crash_like_results_tsv(repo, monkeypatch, capsys):
    ledger = Ledger(repo=repo)
    for status, description in (("keep", "baseline"), ("timeout", "hangs"), ("invalid", "edits prepare")):
        exp_id = ledger.start_experiment(tag="a", commit_sha=status[0] * 40, description=description)
        ledger.finish_experiment(exp_id, status=status, val_bpb=1.0 if status == "keep" else None,
                                 peak_vram_mb=1024.0)
    code, out, _ = run_log(repo, monkeypatch, capsys, "--format", "tsv")
    assert code == 0
    assert [line.split("\t")[:5] for line in out.splitlines()[1:]] == [
        ["kkkkkkk", "1.000000", "1.0", "keep", "baseline"],
        ["ttttttt", "0.000000", "0.0", "crash", "hangs [timeout]"],
        ["iiiiiii", "0.000000", "0.0", "crash", "edits prepare [invalid]"]]


def test_log_table_shows_one_line_per_experiment(repo, monkeypatch, capsys):
    add_rows(Ledger(repo=repo))
    code, out, _ = run_log(repo, monkeypatch, capsys)
    lines = out.splitlines()
    assert code == 0 and len(lines) == 4 and lines[0].split()[:4] == ["id", "tag", "commit", "status"]
    assert "OOM: out of memory" in lines[2] and "1.250000" in lines[1]


def test_log_table_shows_how_much_each_run_trained_and_which_were_starved(repo, monkeypatch, capsys):
    ledger = Ledger(repo=repo)
    for starved in (0, 1):
        exp_id = ledger.start_experiment(tag="a", commit_sha="a" * 40, description=f"run {starved}")
        ledger.finish_experiment(exp_id, status="discard", val_bpb=1.0, num_steps=1234, tokens_per_second=9457.4,
                                 starved=starved)
    code, out, _ = run_log(repo, monkeypatch, capsys)
    header, quiet, busy = out.splitlines()
    assert header.split()[7:9] == ["steps", "tok/s"] and quiet.split()[7:9] == ["1234", "9457"]
    assert busy.endswith("run 1 [starved]") and not quiet.endswith("]")


def add_long_rows(ledger):
    """A keep with a long description, a crash with a long one and its cause, a starved noise repeat."""
    long = "MATRIX_LR 0.04 -> 0.06 and WARMDOWN_RATIO 0.5 -> 0.7; " * 4 + "the end"
    rows = [dict(status="keep", description=long, val_bpb=1.25),
            dict(status="crash", description=long, cause="OOM: out of memory"),
            dict(status="discard", description="baseline (repeat 2/3, seed 1)", val_bpb=1.26, starved=1,
                 cause="baseline repeat on seed 1: measures the noise")]
    for i, cols in enumerate(rows):
        exp_id = ledger.start_experiment(tag="a", commit_sha=str(i) * 40, proposer="manual",
                                         description=cols.pop("description"))
        ledger.finish_experiment(exp_id, num_steps=1234, tokens_per_second=9457.4, peak_vram_mb=2048.0, **cols)
    return long


def test_log_table_cuts_a_long_description_with_an_ellipsis_keeping_its_cause(repo, monkeypatch, capsys):
    long = add_long_rows(Ledger(repo=repo))
    code, out, _ = run_log(repo, monkeypatch, capsys)
    _, keep, crash, _ = out.splitlines()
    description = keep[keep.index("MATRIX_LR"):]
    assert code == 0 and description.endswith("…") and len(description) == 100
    assert long.startswith(description[:-1].rstrip())
    assert crash.endswith("… [OOM: out of memory]") and len(crash[crash.index("MATRIX_LR"):]) == 100


def test_log_table_fits_the_terminal_width(repo, monkeypatch, capsys):
    add_long_rows(Ledger(repo=repo))
    monkeypatch.setenv("COLUMNS", "80")
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    code, out, _ = run_log(repo, monkeypatch, capsys)
    lines = out.splitlines()
    assert code == 0 and len(lines) == 4 and all(len(line) <= 80 for line in lines), out
    assert lines[0].split()[:5] == ["id", "tag", "commit", "status", "val_bpb"] and lines[0].endswith("description")
    assert "MATRIX_LR" in lines[1] and lines[1].endswith("…") and lines[2].endswith("… [OOM: out of memory]")
    assert lines[3].endswith("…] [starved]") and "baseline (repe" in lines[3]
    monkeypatch.setenv("COLUMNS", "60")
    code, out, _ = run_log(repo, monkeypatch, capsys)
    assert all(len(line) <= 60 for line in out.splitlines()) and out.splitlines()[3].endswith("[starved]"), out
    monkeypatch.setenv("COLUMNS", "200")
    code, out, _ = run_log(repo, monkeypatch, capsys)
    assert max(len(line) for line in out.splitlines()) == 200 and "mem_gb" in out and "proposer" in out


@pytest.mark.parametrize("fmt", ["tsv", "json"])
def test_log_tsv_and_json_keep_the_whole_description_even_at_a_terminal(repo, monkeypatch, capsys, fmt):
    long = add_long_rows(Ledger(repo=repo))
    monkeypatch.setenv("COLUMNS", "80")
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    code, out, _ = run_log(repo, monkeypatch, capsys, "--format", fmt)
    assert code == 0 and long in out and "…" not in out


def test_log_table_marks_a_starved_noise_repeat(repo, monkeypatch, capsys):
    add_long_rows(Ledger(repo=repo))
    code, out, _ = run_log(repo, monkeypatch, capsys)
    repeat = out.splitlines()[3]
    assert repeat.endswith("baseline (repeat 2/3, seed 1) [baseline repeat on seed 1: measures the noise] [starved]")


def test_log_unknown_tag_is_a_one_line_error(repo, monkeypatch, capsys):
    add_rows(Ledger(repo=repo))
    code, out, err = run_log(repo, monkeypatch, capsys, "--tag", "nope")
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1 and "known tags: a, b" in err


def test_log_before_any_experiment_is_exit_2_saying_how_to_start(repo, monkeypatch, capsys):
    for args in ([], ["--format", "json"]):
        code, out, err = run_log(repo, monkeypatch, capsys, *args)
        assert code == 2 and out == "" and len(err.strip().splitlines()) == 1
        assert err.startswith(f"error: no ledger at {ledger_path(repo)}") and "autoresearch run" in err


def test_log_outside_a_git_repository_is_a_one_line_error(tmp_path, monkeypatch, capsys):
    code, _, err = run_log(tmp_path, monkeypatch, capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "not in a git repository" in err


# -- a ledger that cannot be trusted is an error, never a fresh start ---------------------------------
@pytest.mark.parametrize("content", [b"", b"SQLite format 3\x00" + b"\x00" * 50, b"not a database at all" * 100])
def test_an_emptied_truncated_or_foreign_ledger_file_is_a_one_line_error(tmp_path, content):
    path = tmp_path / "ledger.sqlite"
    path.write_bytes(content)
    with pytest.raises(LedgerError, match=str(path)):
        Ledger(path=str(path))
    assert path.read_bytes() == content  # left as it was, for the user to restore


def test_a_ledger_without_the_experiments_table_is_an_error(tmp_path):
    path = tmp_path / "ledger.sqlite"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE other (x)")
    conn.commit()
    conn.close()
    with pytest.raises(LedgerError, match="no experiments table"):
        Ledger(path=str(path))


def test_every_verb_reports_a_corrupt_ledger_in_one_line_and_exit_1(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    subprocess.run(["git", "init", "-q", "-b", "autoresearch/t"], cwd=repo, check=True)
    (repo / ".autoresearch").mkdir()
    (repo / ".autoresearch" / "ledger.sqlite").write_bytes(b"")
    for verb in (["log"], ["status"], ["report", "--tag", "t"]):
        proc = subprocess.run([sys.executable, "-m", "autoresearch.cli", *verb], cwd=repo, capture_output=True,
                              text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
        assert proc.returncode == 1, (verb, proc.stderr)
        assert proc.stderr.strip().splitlines()[-1].startswith("error: the ledger ") and "is empty" in proc.stderr, \
            (verb, proc.stderr)


def test_descriptions_causes_and_events_are_stored_as_one_printable_line(tmp_path):
    """A proposer's description or a run's FAIL line is printed as it is in the operator's terminal:
    escape sequences (move up, erase the line, write the clipboard) would forge the lines above it."""
    ledger = Ledger(path=tmp_path / "ledger.sqlite")
    forged = "MATRIX_LR 0.04 -> 0.05\x1b[1A\x1b[2K#9    keep\x1b]52;c;cGF5bG9hZA==\x07\r\nmore"
    exp_id = ledger.start_experiment(tag="t", description=forged)
    ledger.finish_experiment(exp_id, status="crash", cause="FAIL: " + forged)
    ledger.event("t", "note", forged)
    row, event = ledger.experiment(exp_id), ledger.events("t")[-1]
    for text in (row["description"], row["cause"], event["message"]):
        assert text.isprintable() and "\x1b" not in text and "\n" not in text
    assert row["description"].startswith("MATRIX_LR 0.04 -> 0.05 [1A [2K#9 keep ]52;c;")
