"""results.tsv: one campaign in the reference's five columns, written from the ledger and read back."""

import subprocess

import pytest

from autoresearch import results
from autoresearch.ledger import Ledger

HEADER = "commit\tval_bpb\tmemory_gb\tstatus\tdescription"


@pytest.fixture
def ledger(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    subprocess.run(["git", "init", "-q", "-b", "main"], cwd=repo, check=True)
    return Ledger(repo=repo)


def add(ledger, tag, status, val_bpb=None, description="", sha="a"):
    exp_id = ledger.start_experiment(tag=tag, commit_sha=sha * 40, description=description)
    if status != "running":
        ledger.finish_experiment(exp_id, status=status, val_bpb=val_bpb, peak_vram_mb=3072.0)
    return exp_id


def test_write_holds_the_finished_experiments_of_one_campaign_in_ledger_order(ledger, tmp_path):
    add(ledger, "night", "keep", 1.5, "baseline", "a")
    add(ledger, "day", "keep", 1.2, "another campaign", "b")
    add(ledger, "night", "timeout", None, "too slow", "c")
    add(ledger, "night", "discard", 1.6, "worse", "d")
    add(ledger, "night", "running", None, "still training", "e")
    results.write(tmp_path, ledger, "night")
    assert (tmp_path / "results.tsv").read_text() == (
        f"{HEADER}\n"
        "aaaaaaa\t1.500000\t3.0\tkeep\tbaseline\n"
        "ccccccc\t0.000000\t0.0\tcrash\ttoo slow [timeout]\n"
        "ddddddd\t1.600000\t3.0\tdiscard\tworse\n")


def test_log_output_reads_back_one_campaign_per_tag(ledger, tmp_path):
    add(ledger, "night", "keep", 1.5, "baseline", "a")
    add(ledger, "night", "keep", 1.4, "better", "b")
    add(ledger, "day", "crash", None, "broken baseline", "c")
    add(ledger, "day", "keep", 1.3, "baseline again", "d")
    path = tmp_path / "log.tsv"
    path.write_text(results.format_rows(ledger.experiments(), extra=results.LOG_EXTRAS))
    rows = results.read(path)
    assert [(r["id"], r["tag"], r["status"], r["description"]) for r in rows] == [
        (1, "night", "keep", "baseline"), (2, "night", "keep", "better"), (3, "day", "crash", "broken baseline"),
        (4, "day", "keep", "baseline again")]


def test_a_results_tsv_is_one_campaign_named_after_the_file(tmp_path):
    path = tmp_path / "results.tsv"
    path.write_text(f"{HEADER}\n"
                    "a1b2c3d\t0.000000\t0.0\tcrash\tbaseline (OOM)\n"
                    "b2c3d4e\t0.997900\t44.0\tkeep\tbaseline, smaller batch\n"
                    "c3d4e5f\t0.993200\t44.2\tkeep\tlr 0.04\n")
    rows = results.read(path)
    assert [(r["tag"], r["status"], r["val_bpb"], r["is_baseline"]) for r in rows] == [
        ("results", "crash", None, None), ("results", "keep", 0.9979, None), ("results", "keep", 0.9932, None)]
    assert rows[1]["peak_vram_mb"] == pytest.approx(44.0 * 1024)


def test_a_screened_run_is_a_discard_marked_screened(ledger, tmp_path):
    add(ledger, "night", "keep", 1.5, "baseline", "a")
    add(ledger, "night", "screened", 1.3, "screen 30%: DEPTH 4 -> 6", "b")
    results.write(tmp_path, ledger, "night")
    assert (tmp_path / "results.tsv").read_text().splitlines()[-1] == \
        "bbbbbbb\t1.300000\t3.0\tdiscard\tscreen 30%: DEPTH 4 -> 6 [screened]"


def test_a_starved_run_is_marked_starved_and_read_back_as_starved(ledger, tmp_path):
    add(ledger, "night", "keep", 1.5, "baseline", "a")
    starved = add(ledger, "night", "discard", 1.9, "baseline (repeat 2/2)", "a")
    ledger.update_experiment(starved, starved=1, cause="starved: other processes took 60% of the CPUs; re-run")
    add(ledger, "night", "discard", 1.6, "baseline (repeat 2/2) [re-run: #2 was starved]", "a")
    results.write(tmp_path, ledger, "night")
    assert (tmp_path / "results.tsv").read_text().splitlines()[2] == \
        "aaaaaaa\t1.900000\t3.0\tdiscard\tbaseline (repeat 2/2) [starved]"
    assert [r["starved"] for r in results.read(tmp_path / "results.tsv")] == [None, 1, None]


def test_a_running_experiment_in_log_output_is_marked_running_and_read_back_without_it(ledger, tmp_path):
    add(ledger, "night", "keep", 1.5, "baseline", "a")
    add(ledger, "night", "running", None, "still training", "b")
    path = tmp_path / "log.tsv"
    path.write_text(results.format_rows(ledger.experiments(), extra=results.LOG_EXTRAS))
    assert path.read_text().splitlines()[2].split("\t")[:5] == [
        "bbbbbbb", "0.000000", "0.0", "crash", "still training [running]"]
    assert [r["description"] for r in results.read(path)] == ["baseline"]


def test_a_run_a_stop_cut_short_is_no_line_of_results_tsv(ledger, tmp_path):
    """Ctrl-C during an experiment: the ledger keeps the row (and the run is run again), but it is no
    result, and results.tsv does not carry it as a crash for ever."""
    add(ledger, "night", "keep", 1.5, "baseline", "a")
    cut = ledger.start_experiment(tag="night", commit_sha="b" * 40, description="baseline (repeat 2/3, seed 43)")
    ledger.finish_experiment(cut, status="crash", cause="interrupted (SIGINT)")
    add(ledger, "night", "discard", 1.52, "baseline (repeat 2/3, seed 43)", "b")
    results.write(tmp_path, ledger, "night")
    assert (tmp_path / "results.tsv").read_text() == (
        f"{HEADER}\n"
        "aaaaaaa\t1.500000\t3.0\tkeep\tbaseline\n"
        "bbbbbbb\t1.520000\t3.0\tdiscard\tbaseline (repeat 2/3, seed 43)\n")


def test_a_description_cannot_end_in_a_mark_of_the_harness(ledger, tmp_path):
    """A proposer's description ending in "[starved]" would be read back as a starved run, left out of
    the means: the mark is the harness's to write."""
    add(ledger, "night", "keep", 1.5, "baseline", "a")
    add(ledger, "night", "keep", 1.4, "tiny gain [starved]", "b")
    results.write(tmp_path, ledger, "night")
    rows = results.read(tmp_path / "results.tsv")
    assert rows[1]["description"] == "tiny gain (starved)" and not rows[1]["starved"]
