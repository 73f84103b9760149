"""`autoresearch report`: the progress plot, the self-contained HTML page and the terminal summary."""

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from autoresearch import report, results
from autoresearch.ledger import Ledger

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
CHROMIUM = "/usr/bin/chromium"

def git_repo(path):
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["git", "init", "-q", "-b", "main"], cwd=path, check=True)
    return path


def write_ledger(repo, experiments, campaigns=()):
    """The ledger of `repo` (made with the Ledger API) holding the given rows (dicts of columns)."""
    ledger = Ledger(repo=repo)
    for row in experiments:
        ledger.start_experiment(**row)
    for row in campaigns:
        ledger.save_campaign(**row)
    return ledger


def exp(status, val_bpb=None, description="", tag="night", worker=None, t=0, **more):
    """One finished experiment row; t is its start in minutes after the campaign began."""
    start = 1_700_000_000 + 60 * t
    return dict(tag=tag, worker=worker, status=status, val_bpb=0.0 if val_bpb is None else val_bpb,
                description=description, commit_sha=hashlib.sha1(f"{tag}{worker}{t}".encode()).hexdigest(),
                started_at=start, ended_at=start + 50, peak_vram_mb=2048.0, training_seconds=15.0,
                profile="smoke", device="cpu", **more)


def campaign_rows():
    return [
        exp("keep", 1.50, "baseline", t=0, is_baseline=1, diff=""),
        exp("discard", 1.52, "DEPTH 4 -> 6", t=1, best_before=1.50, threshold=0.002,
            diff="-DEPTH = 4\n+DEPTH = 6\n", num_steps=120, total_tokens_M=1.2),
        exp("keep", 1.45, "MATRIX_LR 0.04 -> 0.06 <b>&</b>", t=2, best_before=1.50, threshold=0.002,
            diff="--- a/train.py\n+++ b/train.py\n-MATRIX_LR = 0.04\n+MATRIX_LR = 0.06  # <script>alert(1)</script>\n"),
        exp("crash", None, "huge batch", t=3, cause="out of memory", best_before=1.45, threshold=0.002),
        exp("discard", 1.70, "way worse", t=4, best_before=1.45, threshold=0.002),
        exp("keep", 1.40, "WARMDOWN 0.5 -> 0.7", t=5, best_before=1.45, threshold=0.002,
            diff="-WARMDOWN_RATIO = 0.5\n+WARMDOWN_RATIO = 0.7\n"),
        exp("timeout", None, "too slow", t=6, cause="killed after 30s", best_before=1.40, threshold=0.002),
    ]


BASELINE_SHA = "33d2885" + "0" * 33


def baseline_only_rows():
    """A campaign of the unchanged baseline only, as the loop records it: an interrupted run, a starved run
    (discarded and run again), the re-run that counted (keep) and two noise repeats; one commit throughout."""
    rows = [exp("crash", None, "baseline", t=0, cause="interrupted"),
            exp("discard", 2.740018, "baseline", t=1, starved=1,
                cause="starved: other processes took 60% of the CPUs during training; re-run"),
            exp("keep", 2.340574, "baseline [re-run: #2 was starved]", t=2, starved=0, retry_of=2),
            exp("discard", 2.09, "baseline (repeat 2/3, seed 43)", t=3, starved=0),
            exp("discard", 2.24, "baseline (repeat 3/3, seed 44)", t=4, starved=0)]
    return [dict(r, commit_sha=BASELINE_SHA, is_baseline=1) for r in rows]


def drawn_figure(rows, tmp_path, monkeypatch, plot=report.plot_progress):
    """The matplotlib figure plot (plot_progress, plot_tags) saves for rows."""
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib import pyplot as plt
    seen = []
    real_savefig = plt.Figure.savefig
    monkeypatch.setattr(plt.Figure, "savefig", lambda fig, *a, **k: (seen.append(fig), real_savefig(fig, *a, **k)))
    plot(rows, tmp_path / "p.png")
    [fig] = seen
    return fig


def run_cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "autoresearch.cli", "report", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(Path(report.__file__).parents[1])})


def log_tsv(repo):
    """What `autoresearch log --format tsv` prints in repo."""
    return subprocess.run([sys.executable, "-m", "autoresearch.cli", "log", "--format", "tsv"], cwd=repo,
                          capture_output=True, text=True, check=True,
                          env={**os.environ, "PYTHONPATH": str(Path(report.__file__).parents[1])}).stdout


def assert_png(path):
    data = Path(path).read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 5000


@pytest.fixture
def campaign(tmp_path):
    repo = git_repo(tmp_path / "repo")
    write_ledger(repo, campaign_rows(), [dict(tag="night", min_delta=0.002, noise_std=0.0007, profile="smoke")])
    return repo


# --- the command --------------------------------------------------------------------------------

def test_report_writes_png_and_html_under_reports_tag_and_prints_the_summary(campaign):
    result = run_cli(cwd=campaign)
    assert result.returncode == 0, result.stderr
    out = campaign / "reports" / "night"
    assert_png(out / "progress.png")
    assert (out / "report.html").is_file()
    text = result.stdout
    assert "7 experiments (1 baseline run), 2 kept" in text
    assert "baseline val_bpb:  1.500000" in text
    assert "best val_bpb:      1.400000" in text
    assert "improvement:       0.100000 (6.67%)" in text
    assert "crash: out of memory x1" in text and "timeout: killed after 30s x1" in text
    assert "noise threshold:   0.002000 (baseline noise std 0.000700)" in text
    assert "profile / device:  smoke / cpu" in text
    assert f"wrote {out / 'report.html'}" in text


def test_report_summary_counts_keep_rate_without_the_baseline_and_experiments_per_hour(campaign):
    rows, campaigns, tags = report.load_ledger(["night"], campaign)
    report.with_improvements(rows)
    s = report.summarize("night", rows, campaigns["night"])
    assert (s["experiments"], s["baseline_runs"], s["kept"], s["failed"]) == (7, 1, 2, 2)
    assert s["keep_rate"] == pytest.approx(2 / 6)
    assert s["per_hour"] == pytest.approx(7 / ((6 * 60 + 50) / 3600))


def test_report_out_option_chooses_the_folder(campaign, tmp_path):
    result = run_cli("--out", str(tmp_path / "elsewhere"), cwd=campaign)
    assert result.returncode == 0, result.stderr
    assert_png(tmp_path / "elsewhere" / "progress.png")


def test_report_with_several_tags_writes_one_report_named_after_all(tmp_path):
    repo = git_repo(tmp_path / "repo")
    write_ledger(repo, campaign_rows() + [exp("keep", 1.6, "base", tag="day", t=0, is_baseline=1),
                                          exp("keep", 1.55, "x", tag="day", t=1, best_before=1.6)])
    result = run_cli("--tag", "night", "--tag", "day", cwd=repo)
    assert result.returncode == 0, result.stderr
    assert_png(repo / "reports" / "night+day" / "progress.png")
    assert "campaign night:" in result.stdout and "campaign day:" in result.stdout


def test_top_hits_are_keeps_ranked_by_improvement_over_the_previous_best(campaign):
    rows, _, _ = report.load_ledger(["night"], campaign)
    report.with_improvements(rows)
    hits = sorted((r for r in rows if r["gain"] is not None), key=lambda r: -r["gain"])
    assert [r["description"] for r in hits] == ["MATRIX_LR 0.04 -> 0.06 <b>&</b>", "WARMDOWN 0.5 -> 0.7"]
    assert hits[0]["gain"] == pytest.approx(0.05)


def test_html_escapes_descriptions_and_diffs(campaign):
    assert run_cli(cwd=campaign).returncode == 0
    page = (campaign / "reports" / "night" / "report.html").read_text()
    assert "<script>alert(1)</script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<b>&</b>" not in page and "&lt;b&gt;&amp;&lt;/b&gt;" in page


def test_html_is_self_contained(campaign):
    assert run_cli(cwd=campaign).returncode == 0
    page = (campaign / "reports" / "night" / "report.html").read_text()
    assert 'src="data:image/png;base64,' in page
    for remote in ("http://", "https://", "<link", "src=\"http"):
        assert remote not in page


def test_noise_not_measured_is_said_when_the_campaign_has_no_noise_std(tmp_path):
    repo = git_repo(tmp_path / "repo")
    write_ledger(repo, campaign_rows(), [dict(tag="night", min_delta=0.002, profile="smoke")])
    result = run_cli(cwd=repo)
    assert result.returncode == 0, result.stderr
    assert "noise threshold:   0.002000 (noise not measured)" in result.stdout
    assert "noise not measured" in (repo / "reports" / "night" / "report.html").read_text()


def test_best_that_is_the_baseline_is_called_the_baseline(tmp_path):
    repo = git_repo(tmp_path / "repo")
    write_ledger(repo, [exp("keep", 1.5, "baseline", t=0, is_baseline=1),
                        exp("discard", 1.6, "worse", t=1, is_baseline=0, best_before=1.5)])
    result = run_cli(cwd=repo)
    assert result.returncode == 0, result.stderr
    assert "best val_bpb:      1.500000  (the baseline: nothing beat it yet)" in result.stdout
    assert "improvement:       0.000000 (0.00%)" in result.stdout


def test_a_starved_baseline_run_is_left_out_of_the_baseline_as_the_keep_rule_leaves_it_out(tmp_path):
    repo = git_repo(tmp_path / "repo")
    write_ledger(repo, [exp("keep", 1.5, "baseline", t=0, is_baseline=1),
                        exp("discard", 1.9, "baseline (repeat 2/2)", t=1, is_baseline=1, starved=1,
                            cause="starved: other processes took 36% of the CPUs during training; re-run"),
                        exp("discard", 1.7, "baseline (repeat 2/2) [re-run]", t=2, is_baseline=1)])
    result = run_cli(cwd=repo)
    assert result.returncode == 0, result.stderr
    assert "baseline val_bpb:  1.600000" in result.stdout


def test_on_a_starved_machine_the_baseline_is_the_reference_the_keep_rule_uses(tmp_path):
    """Every baseline run starved: the two the loop threw away (and ran again) are no part of it, as they
    are no part of the ledger's reference."""
    repo = git_repo(tmp_path / "repo")
    ledger = write_ledger(repo, [dict(r, starved=1) for r in baseline_only_rows()])
    assert ledger.reference("night") == pytest.approx((2.340574 + 2.09 + 2.24) / 3)
    result = run_cli("--json", cwd=repo)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["summaries"][0]["baseline"] == pytest.approx(ledger.reference("night"))


# --- what a researcher asks next ------------------------------------------------------------------

def test_every_experiment_has_its_diff_steps_and_tokens_per_second_on_the_page(campaign):
    assert run_cli(cwd=campaign).returncode == 0
    page = (campaign / "reports" / "night" / "report.html").read_text()
    discard = page[page.index('<details class="experiment discard" id="exp-2">'):]
    discard = discard[:discard.index("</details>")]
    assert "DEPTH 4 -&gt; 6" in discard and '<span class="add">+DEPTH = 6</span>' in discard
    assert "120 steps" in discard and "80,000 tokens/s" in discard


def test_tokens_per_second_is_the_ledger_column_when_there_is_one():
    row = exp("keep", 1.5, total_tokens_M=1.2)  # 15 s of training
    assert report.tokens_per_second(row) == pytest.approx(80_000)
    assert report.tokens_per_second(dict(row, tokens_per_second=70_000.0)) == 70_000
    assert report.tokens_per_second(dict(exp("crash", None), training_seconds=None)) is None


def test_a_starved_run_is_flagged_in_the_table():
    rows = [dict(exp("keep", 1.5, "baseline", t=0), id=1, starved=0),
            dict(exp("discard", 1.6, "slow", t=1), id=2, starved=1)]
    table = report.table_html(rows)
    assert "<th>starved</th>" in table
    assert table.count("<td>starved</td>") == 1
    assert "<th>starved</th>" not in report.table_html([dict(exp("keep", 1.5), id=1)])


STEP_LINES = ["step 00000 (0.0%) | loss: 6.900000 | lrm: 1.00 | dt: 90ms | tok/s: 5,000",
              "step 00001 (10.0%) | loss: 6.100000 | lrm: 1.00 | dt: 90ms | tok/s: 5,000",
              "step 00002 (20.0%) | loss: 5.500000 | lrm: 1.00 | dt: 90ms | tok/s: 5,000    "]


@pytest.mark.parametrize("separator", ["\r", "\n"], ids=["carriage-returns", "newlines"])
def test_loss_curve_is_read_from_the_step_lines_of_a_log(separator):
    text = "model: 1.2M params\n" + separator.join(STEP_LINES) + "\n---\nval_bpb:          1.500000\n"
    assert report.loss_curve(text) == [(0, 6.9), (1, 6.1), (2, 5.5)]


def test_each_run_log_is_copied_next_to_the_report_and_linked(tmp_path):
    repo = git_repo(tmp_path / "repo")
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "1.log").write_text("\r".join(STEP_LINES) + "\n---\nval_bpb:          1.500000\n")
    (logs / "shared.log").write_text("the second run's log\n")
    ended = dict(ended_at=time.time() + 60)  # the logs were written before their experiments ended
    write_ledger(repo, [dict(exp("keep", 1.5, "baseline", t=0, is_baseline=1, log_path=str(logs / "1.log")), **ended),
                        dict(exp("discard", 1.6, "overwritten", t=1, log_path=str(logs / "shared.log"),
                                 log_tail="its last lines"), **ended),
                        dict(exp("discard", 1.7, "owns it", t=2, log_path=str(logs / "shared.log")), **ended),
                        dict(exp("crash", None, "gone", t=3, log_path=str(logs / "missing.log")), **ended)])
    assert run_cli(cwd=repo).returncode == 0
    out = repo / "reports" / "night"
    page = (out / "report.html").read_text()
    first = next((out / "report_logs").glob("1-*.log"))
    assert first.read_text() == (logs / "1.log").read_text()
    assert f'href="report_logs/{first.name}"' in page
    assert next((out / "report_logs").glob("3-*.log")).read_text() == "the second run's log\n"
    assert next((out / "report_logs").glob("2-*.tail.log")).read_text() == "its last lines\n"
    assert "overwritten by #3" in page and "log not found" in page
    # the baseline's log has step lines: its loss curve is on the page
    baseline = page[page.index('id="exp-1"'):]
    assert '<img class="loss"' in baseline[:baseline.index("</details>")]


def test_a_log_written_after_its_experiment_ended_is_not_shown_as_its_log(tmp_path):
    repo = git_repo(tmp_path / "repo")
    (tmp_path / "run.log").write_text("a later run by hand\n")
    write_ledger(repo, [exp("keep", 1.5, "baseline", t=0, is_baseline=1, log_path=str(tmp_path / "run.log"))])
    assert run_cli(cwd=repo).returncode == 0
    out = repo / "reports" / "night"
    assert "log rewritten after the experiment ended" in (out / "report.html").read_text()
    assert not list((out / "report_logs").glob("*.log"))


def test_several_tags_get_one_chart_overlaying_their_kept_val_bpb(tmp_path):
    repo = git_repo(tmp_path / "repo")
    write_ledger(repo, campaign_rows() + [exp("keep", 1.6, "base", tag="day", t=0, is_baseline=1),
                                          exp("keep", 1.55, "x", tag="day", t=1, best_before=1.6)])
    assert run_cli("--tag", "night", "--tag", "day", cwd=repo).returncode == 0
    out = repo / "reports" / "night+day"
    assert_png(out / "tags.png")
    assert 'id="tags-plot"' in (out / "report.html").read_text()
    assert run_cli("--tag", "night", cwd=repo).returncode == 0
    assert 'id="tags-plot"' not in (repo / "reports" / "night" / "report.html").read_text()


def test_json_prints_the_summaries_and_rows(campaign):
    result = run_cli("--json", cwd=campaign)
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    [summary] = data["summaries"]
    assert (summary["tag"], summary["kept"], summary["best"], summary["noise_std"]) == ("night", 2, 1.40, 0.0007)
    assert summary["keep_rate"] == pytest.approx(2 / 6) and summary["best_id"] == 6
    assert [r["id"] for r in data["rows"]] == list(range(1, 8))
    assert data["rows"][5]["vs_baseline"] == pytest.approx(-0.10) and data["rows"][5]["gain"] == pytest.approx(0.05)
    assert data["rows"][1]["tokens_per_second"] == pytest.approx(80_000)
    assert not (campaign / "reports").exists()  # --json only prints


# --- results.tsv ----------------------------------------------------------------------------------

RESULTS_TSV = (
    "commit\tval_bpb\tmemory_gb\tstatus\tdescription\n"
    "a1b2c3d\t0.997900\t44.0\tkeep\tbaseline\n"
    "b2c3d4e\t0.000000\t0.0\tcrash\tdouble the width (OOM)\n"
    "c3d4e5f\t0.993200\t44.2\tkeep\tincrease LR to 0.04 & <more>\n"
    "d4e5f6g\t1.005000\t44.0\tdiscard\tswitch to GeLU activation\n"
)


def test_results_tsv_alone_makes_a_report_named_after_the_file(tmp_path):
    tsv = tmp_path / "results.tsv"
    tsv.write_text(RESULTS_TSV)
    repo = git_repo(tmp_path / "repo")
    result = run_cli("--results", str(tsv), cwd=repo)
    assert result.returncode == 0, result.stderr
    out = repo / "reports" / "results"
    assert_png(out / "progress.png")
    page = (out / "report.html").read_text()
    assert "results.tsv records no diffs" in page
    assert "increase LR to 0.04 &amp; &lt;more&gt;" in page
    assert "4 experiments (1 baseline run), 1 kept" in result.stdout
    assert "improvement:       0.004700 (0.47%)" in result.stdout
    assert "experiments/hour:  n/a (results.tsv does not record it)" in result.stdout


def test_from_a_tsv_the_first_row_is_the_baseline_and_top_hits_only_beat_the_best(tmp_path):
    tsv = tmp_path / "results.tsv"
    tsv.write_text("commit\tval_bpb\tmemory_gb\tstatus\tdescription\n"
                   "a1b2c3d\t1.000000\t1.0\tkeep\tbaseline\n"
                   "b2c3d4e\t0.990000\t1.0\tkeep\tlower lr\n"
                   "c3d4e5f\t0.995000\t1.0\tkeep\tkept by hand, worse than the best\n"
                   "d4e5f6a\t1.100000\t1.0\tdiscard\tworse\n")
    result = run_cli("--results", str(tsv), "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    [summary] = data["summaries"]
    assert summary["baseline"] == 1.0 and summary["keep_rate"] == pytest.approx(2 / 3)
    assert [r["is_baseline"] for r in data["rows"]] == [1, 0, 0, 0]
    assert [r["description"] for r in data["rows"] if r["gain"] is not None] == ["lower lr"]
    result = run_cli("--results", str(tsv), cwd=tmp_path)
    hits = result.stdout[result.stdout.index("top hits:"):].splitlines()[1:-2]
    assert [line.split()[0] for line in hits] == ["+0.010000"]


def test_log_tsv_output_is_read_as_one_campaign_per_tag(tmp_path):
    repo = git_repo(tmp_path / "repo")
    write_ledger(repo, campaign_rows() + [exp("keep", 1.6, "base", tag="day", t=7, is_baseline=1),
                                          exp("keep", 1.55, "x", tag="day", t=8, best_before=1.6)])
    (tmp_path / "log.tsv").write_text(log_tsv(repo))
    result = run_cli("--results", str(tmp_path / "log.tsv"), cwd=repo)
    assert result.returncode == 0, result.stderr
    assert "campaign night: 7 experiments (1 baseline run), 2 kept" in result.stdout
    assert "campaign day: 2 experiments (1 baseline run), 1 kept" in result.stdout
    assert "baseline val_bpb:  1.600000" in result.stdout


def test_without_baseline_marks_every_run_of_the_first_rows_commit_is_a_baseline_run():
    rows = [dict(r, is_baseline=None) for r in baseline_only_rows()]
    rows.append(exp("discard", 2.5, "DEPTH 4 -> 6", t=5, is_baseline=None))
    assert [r["is_baseline"] for r in report.mark_baselines(rows)] == [1, 1, 1, 1, 1, 0]


@pytest.mark.parametrize("source", ["results.tsv", "log --format tsv"])
def test_a_tsv_of_baseline_runs_only_reports_no_keep_and_the_ledgers_baseline(tmp_path, source):
    repo = git_repo(tmp_path / "repo")
    ledger = write_ledger(repo, baseline_only_rows())
    if source == "results.tsv":
        results.write(repo, ledger, "night")
        tsv = repo / "results.tsv"
    else:
        tsv = tmp_path / "log.tsv"
        tsv.write_text(log_tsv(repo))
    from_ledger, from_tsv = run_cli(cwd=repo), run_cli("--results", str(tsv), "--out", str(tmp_path / "t"), cwd=repo)
    assert from_ledger.returncode == 0 and from_tsv.returncode == 0, from_ledger.stderr + from_tsv.stderr
    assert "4 experiments (4 baseline runs), 0 kept" in from_tsv.stdout  # the interrupted run is none
    # the starved run is left out, as the ledger leaves it out: the mean of 2.340574, 2.09 and 2.24
    assert "baseline val_bpb:  2.223525" in from_tsv.stdout
    assert "improvement:       0.000000 (0.00%)" in from_tsv.stdout
    assert "top hits:" not in from_tsv.stdout
    assert "No experiment improved on the baseline yet." in (tmp_path / "t" / "report.html").read_text()
    assert from_tsv.stdout.splitlines()[3:6] == from_ledger.stdout.splitlines()[3:6]  # baseline, best, improvement


@pytest.mark.parametrize("content, message", [
    ("", "first line must be the header"),
    ("commit,val_bpb,memory_gb,status,description\n", "first line must be the header"),
    ("commit\tval_bpb\tmemory_gb\tstatus\tdescription\nabc\t0.9\t1.0\n", "line 2: expected 5 tab-separated"),
    ("commit\tval_bpb\tmemory_gb\tstatus\tdescription\nabc\tfast\t1.0\tkeep\tx\n", "line 2: val_bpb"),
    ("commit\tval_bpb\tmemory_gb\tstatus\tdescription\nabc\t0.9\t1.0\tmaybe\tx\n", "status 'maybe'"),
    ("commit\tval_bpb\tmemory_gb\tstatus\tdescription\n", "no experiments yet"),
])
def test_malformed_results_tsv_is_one_clear_line_and_exit_2(tmp_path, content, message):
    tsv = tmp_path / "results.tsv"
    tsv.write_text(content)
    result = run_cli("--results", str(tsv), cwd=tmp_path)
    assert result.returncode == 2
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr


def test_missing_results_tsv_is_one_clear_line(tmp_path):
    result = run_cli("--results", str(tmp_path / "nope.tsv"), cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip() == f"error: no such results file: {tmp_path / 'nope.tsv'} " \
                                    f"(pass the path of a results.tsv)"


# --- bad ledger input -----------------------------------------------------------------------------

def test_unknown_tag_names_the_known_ones(campaign):
    result = run_cli("--tag", "nope", cwd=campaign)
    assert result.returncode == 2
    assert "unknown tag 'nope'" in result.stderr and "'night'" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_no_ledger_says_how_to_make_one(tmp_path):
    repo = git_repo(tmp_path / "repo")
    result = run_cli(cwd=repo)
    assert result.returncode == 2
    assert "no ledger at" in result.stderr and "--results" in result.stderr
    assert not (repo / ".autoresearch" / "ledger.sqlite").exists()


def test_empty_ledger_is_one_clear_line(tmp_path):
    repo = git_repo(tmp_path / "repo")
    write_ledger(repo, [])
    result = run_cli(cwd=repo)
    assert result.returncode == 2
    assert "has no finished experiments yet" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


# --- the plot on edge cases -----------------------------------------------------------------------

@pytest.mark.parametrize("rows, summary", [
    pytest.param([exp("crash", None, "broke", t=0, cause="NaN"), exp("crash", None, "broke again", t=1),
                  exp("keep", 1.5, "baseline", t=2), exp("discard", 1.6, "worse", t=3)],
                 "4 experiments (3 baseline runs), 0 kept", id="crashes-first"),
    pytest.param([exp("discard", 1.5, "a", t=0), exp("discard", 1.6, "b", t=1)],
                 "2 experiments (1 baseline run), 0 kept", id="no-keeps"),
    pytest.param([exp("keep", 1.5, "baseline", t=0)], "1 experiment (1 baseline run), 0 kept",
                 id="single-experiment"),
    pytest.param([exp("crash", None, "a", t=0), exp("timeout", None, "b", t=1)],
                 "2 experiments (2 baseline runs), 0 kept", id="all-crashes"),
    pytest.param([exp("keep", 1.5, "baseline", worker="gpu0", t=0), exp("discard", 1.6, "a", worker="gpu1", t=1),
                  exp("keep", 1.4, "b", worker="gpu1", t=2, best_before=1.5),
                  exp("crash", None, "c", worker="gpu0", t=3), exp("keep", 1.3, "d", worker="gpu0", t=4,
                                                                  best_before=1.4)],
                 "5 experiments (1 baseline run), 2 kept", id="swarm-2-workers"),
])
def test_plot_is_a_valid_png_on_edge_cases(tmp_path, rows, summary):
    repo = git_repo(tmp_path / "repo")
    write_ledger(repo, rows)
    result = run_cli(cwd=repo)
    assert result.returncode == 0, result.stderr
    assert_png(repo / "reports" / "night" / "progress.png")
    assert summary in result.stdout


def test_crashes_do_not_stretch_the_y_axis():
    rows = [exp("crash", None, "x", t=0), exp("keep", 1.5, "baseline", t=1), exp("keep", 1.4, "y", t=2)]
    bottom, top = report.y_range(rows)
    assert 1.3 < bottom < 1.4 and 1.5 < top < 1.6


def test_plot_has_one_panel_per_worker_in_a_swarm(tmp_path):
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib import pyplot as plt
    rows = [exp("keep", 1.5, "baseline", worker="gpu0", t=0), exp("discard", 1.6, "a", worker="gpu1", t=1)]
    seen = []
    real_savefig = plt.Figure.savefig
    plt.Figure.savefig = lambda fig, *a, **k: (seen.append([ax.get_title() for ax in fig.axes]),
                                               real_savefig(fig, *a, **k))
    try:
        report.plot_progress(rows, tmp_path / "p.png")
    finally:
        plt.Figure.savefig = real_savefig
    assert seen == [["gpu0: 1 experiment, 1 kept", "gpu1: 1 experiment, 0 kept"]]


def test_the_plot_shows_every_kept_point_and_the_running_best_inside_its_y_axis(tmp_path, monkeypatch):
    [ax] = drawn_figure(baseline_only_rows(), tmp_path, monkeypatch).axes
    bottom, top = ax.get_ylim()
    [kept] = [c.get_offsets()[:, 1] for c in ax.collections if c.get_label() == "keep"]
    [best] = [line.get_ydata() for line in ax.lines if line.get_label().startswith("running best")]
    assert list(kept) == [2.340574]
    assert all(bottom < y < top for y in [*kept, *best])


def test_the_running_best_is_the_reference_the_keep_decision_uses(tmp_path, monkeypatch):
    """The mean of a kept program's full-budget runs (ledger.reference_of), not its luckiest draw."""
    a, c = "a" * 40, "c" * 40
    rows = [dict(exp("keep", 1.50, "baseline", t=0, is_baseline=1), commit_sha=a),
            dict(exp("discard", 1.54, "baseline (repeat 2/2)", t=1, is_baseline=1), commit_sha=a),
            exp("discard", 1.60, "worse", t=2, is_baseline=0),
            dict(exp("discard", 1.40, "lucky", t=3, is_baseline=0, cause="would-be keep, awaiting its "
                     "confirmation run"), commit_sha=c),
            dict(exp("keep", 1.44, "lucky [confirm, seed 44]", t=4, is_baseline=0), commit_sha=c)]
    assert [x for x, _ in report.running_best(rows)] == [1, 2, 3, 4, 5]
    assert [y for _, y in report.running_best(rows)] == pytest.approx([1.50, 1.52, 1.52, 1.52, 1.42])
    [ax] = drawn_figure(rows, tmp_path, monkeypatch).axes
    [line] = [line for line in ax.lines if line.get_label().startswith("running best")]
    assert list(line.get_xdata()) == [1, 2, 3, 4, 5, 5.5]
    assert list(line.get_ydata()) == pytest.approx([1.50, 1.52, 1.52, 1.52, 1.42, 1.42])


def test_one_experiment_is_written_in_the_singular(tmp_path, monkeypatch):
    rows = report.mark_baselines([exp("keep", 1.5, "baseline", t=0)])
    s = report.summarize("night", report.with_improvements(rows), {})
    assert report.counts_text(s) == "1 experiment (1 baseline run), 0 kept"
    assert drawn_figure(rows, tmp_path, monkeypatch)._suptitle.get_text() == "1 experiment, 0 kept"
    [ax] = drawn_figure(rows, tmp_path, monkeypatch, plot=report.plot_tags).axes
    assert ax.get_legend_handles_labels()[1] == ["night (1 experiment)"]


# --- the page in a real browser -------------------------------------------------------------------

def chromium_or_skip():
    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        message = f"Chromium is not installed at {CHROMIUM} (apt-get install -y chromium)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        if os.environ.get("CI") == "true":
            pytest.fail("playwright is not installed (pip install playwright)")
        pytest.skip("playwright is not installed")
    return sync_playwright


def test_report_page_works_in_a_headless_browser(campaign):
    sync_playwright = chromium_or_skip()
    assert run_cli(cwd=campaign).returncode == 0
    url = (campaign / "reports" / "night" / "report.html").as_uri()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run"])
        try:
            page = browser.new_page()
            requests = []
            page.on("request", lambda r: requests.append(r.url))
            page.goto(url)
            # the plot is shown
            assert page.eval_on_selector("#plot", "img => img.complete && img.naturalWidth") > 0
            # one row per experiment
            assert page.locator("#experiments tbody tr").count() == 7
            # a top hit's diff opens on click
            diff = page.locator("#top-hits details").first.locator("pre.diff")
            assert not diff.is_visible()
            page.locator("#top-hits summary").first.click()
            assert diff.is_visible()
            assert "MATRIX_LR = 0.06  # <script>alert(1)</script>" in diff.inner_text()
            # clicking a header sorts the table (val_bpb ascending, crashes last)
            page.locator("#experiments th", has_text="val_bpb").click()
            column = page.eval_on_selector_all("#experiments tbody tr",
                                               "rows => rows.map(r => r.cells[5].textContent)")
            assert column == ["1.400000", "1.450000", "1.500000", "1.520000", "1.700000", "", ""]
            page.locator("#experiments th", has_text="val_bpb").click()
            column = page.eval_on_selector_all("#experiments tbody tr",
                                               "rows => rows.map(r => r.cells[5].textContent)")
            assert column[:2] == ["1.700000", "1.520000"]
            # the number of an experiment opens its details, with its diff
            experiment = page.locator("#exp-2 pre.diff")
            assert not experiment.is_visible()
            page.locator('#experiments a[href="#exp-2"]').click()
            assert experiment.is_visible() and "+DEPTH = 6" in experiment.inner_text()
            # nothing but the file itself and its inline images was loaded
            assert all(u.startswith(("file:", "data:")) for u in requests), requests
        finally:
            browser.close()


def test_y_axis_shows_the_tries_when_nothing_beat_the_baseline():
    rows = [exp("keep", 1.5, "baseline", t=0), exp("discard", 1.52, "worse", t=1)]
    bottom, top = report.y_range(rows)
    assert bottom < 1.5 and top > 1.52


def test_results_tsv_may_have_extra_columns_like_autoresearch_log_writes(tmp_path):
    tsv = tmp_path / "log.tsv"
    tsv.write_text("commit\tval_bpb\tmemory_gb\tstatus\tdescription\ttag\tid\n"
                   "a1b2c3d\t1.000000\t1.0\tkeep\tbaseline\tnight\t1\n"
                   "b2c3d4e\t0.990000\t1.0\tkeep\tlower lr\tnight\t2\n")
    rows = report.read_results_tsv(tsv)
    assert [r["description"] for r in rows] == ["baseline", "lower lr"]


def test_screened_runs_are_counted_apart_never_kept_and_never_the_best(tmp_path):
    repo = git_repo(tmp_path / "repo")
    write_ledger(repo, [exp("keep", 1.50, "baseline", t=0, is_baseline=1),
                        exp("screened", 1.30, "screen 30%: DEPTH 4 -> 6", t=1, time_budget=4.5),
                        exp("discard", 1.51, "full run of screened #2: DEPTH 4 -> 6", t=2),
                        exp("keep", 1.45, "MATRIX_LR 0.04 -> 0.06", t=3)],
                 [dict(tag="night", noise_std=0.001)])
    rows, campaigns, _ = report.load_ledger(["night"], repo)
    s = report.summarize("night", report.with_improvements(rows), campaigns["night"])
    assert (s["screened"], s["kept"], s["best"]) == (1, 1, 1.45)
    assert s["keep_rate"] == pytest.approx(1 / 2)  # the screening run is not a proposal judged for keeping
    assert "1 screened (short runs, not compared)" in report.counts_text(s)
    assert "the baseline and screening runs not counted" in report.keep_rate_text(s)
    result = run_cli("--tag", "night", cwd=repo)
    assert result.returncode == 0, result.stderr
    page = (repo / "reports" / "night" / "report.html").read_text()
    assert '<tr class="screened">' in page and "1 screened (short runs, not compared)" in page


def test_a_run_a_stop_cut_short_is_neither_an_experiment_nor_a_failure():
    rows = campaign_rows() + [exp("crash", None, "cut short", t=7, cause="interrupted (SIGINT)")]
    s = report.summarize("night", rows, {})
    assert s["experiments"] == 7 and s["failed"] == 2 and "interrupted" not in " ".join(s["crash_causes"])


def test_the_best_is_the_mean_of_the_kept_programs_runs_as_the_keep_rule_has_it():
    """A keep confirmed by a second run: one lucky sample is not the best a change must beat."""
    rows = campaign_rows()[:3]
    rows.append(dict(rows[2], status="discard", val_bpb=1.47, started_at=rows[2]["started_at"] + 30))
    s = report.summarize("night", rows, {})
    assert s["best"] == pytest.approx((1.45 + 1.47) / 2) and s["best_row"]["val_bpb"] == 1.45


def test_the_threshold_is_the_one_the_next_change_must_beat_once_the_noise_is_measured():
    """The baseline runs recorded threshold 0 (no noise yet); the loop then set max(min_delta, 2 x std)."""
    rows = [dict(r, threshold=0.0) for r in campaign_rows()]
    assert report.summarize("night", rows, {"noise_std": 0.006473})["threshold"] == pytest.approx(0.012946)
    assert report.summarize("night", rows, {})["threshold"] == 0.0  # a campaign that says nothing: as recorded


def test_the_report_leaves_out_runs_a_stop_cut_short_everywhere(tmp_path):
    repo = git_repo(tmp_path / "repo")
    write_ledger(repo, campaign_rows() + [exp("crash", None, "cut short", t=7, cause="interrupted (SIGINT)")])
    rows, summaries, _, _ = report.load(repo=repo)
    assert "cut short" not in [r["description"] for r in rows] and summaries[0]["experiments"] == 7
