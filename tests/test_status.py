"""`autoresearch status`: the live view of running campaigns."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from autoresearch import status
from test_report import exp, git_repo, write_ledger

ROOT = Path(__file__).resolve().parents[1]


def run_status(*args, cwd, **kw):
    return subprocess.run([sys.executable, "-m", "autoresearch.cli", "status", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, **kw)


def wait_for(predicate, seconds):
    deadline = time.time() + seconds
    while time.time() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return False


def progress_lines(log):
    text = log.read_text(errors="replace") if log.exists() else ""
    return [line for line in re.split(r"[\r\n]", text) if status.PROGRESS.match(line.strip())]


def test_status_shows_the_progress_bar_of_a_running_smoke_campaign(campaign_repo):
    """`autoresearch run` on the real train.py (smoke profile, 6 s budget) in the background."""
    subprocess.run(["git", "checkout", "-qb", "autoresearch/smoke"], cwd=campaign_repo, check=True)
    env = {**os.environ, "AUTORESEARCH_TIME_BUDGET": "6", "PYTHONPATH": str(ROOT)}
    run = subprocess.Popen([sys.executable, "-m", "autoresearch.cli", "run", "-m", "baseline <as is>"],
                           cwd=campaign_repo, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert wait_for(lambda: progress_lines(campaign_repo / "run.log") or run.poll() is not None, 120)
        assert run.poll() is None, run.stdout.read()
        during = run_status(cwd=campaign_repo)
        output, _ = run.communicate(timeout=180)
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
    assert during.returncode == 0, during.stderr
    assert "campaign smoke [smoke]: no finished experiment yet" in during.stdout
    line = next(l for l in during.stdout.splitlines() if "baseline <as is>" in l)
    assert re.search(r"#1 'baseline <as is>'  \[[#.]{30}\] +\d+\.\d%  remaining \d+s  elapsed \d+:\d\d of \d+:\d\d max",
                     line), line
    # when it is over: nothing running, its result among the last ones
    assert run.returncode == 0, output
    after = run_status(cwd=campaign_repo)
    assert "No campaign is running. The last results:" in after.stdout
    assert re.search(r"#1 +keep +\d\.\d{6} +[0-9a-f]{7} +\d+ steps +[\d.]+k tok/s +baseline <as is>",
                     after.stdout), after.stdout


def test_status_with_nothing_running_says_so_and_shows_the_last_results(tmp_path):
    repo = git_repo(tmp_path / "repo")
    write_ledger(repo, [exp("keep", 1.5, "baseline", t=0), exp("crash", None, "oops", t=1, cause="NaN loss"),
                        exp("keep", 1.4, "better <lr>", t=2, best_before=1.5)])
    result = run_status(cwd=repo)
    assert result.returncode == 0, result.stderr
    assert "No campaign is running. The last results:" in result.stdout
    assert "campaign night [smoke / cpu]: 3 done, baseline + 1 kept, best 1.400000" in result.stdout
    assert re.search(r"crash +crashed ", result.stdout) and "[NaN loss]" in result.stdout
    assert "better <lr>" in result.stdout


def test_status_shows_how_much_each_run_trained_and_which_were_starved(tmp_path):
    repo = git_repo(tmp_path / "repo")
    write_ledger(repo, [exp("keep", 1.5, "baseline", t=0, num_steps=812, tokens_per_second=9457.0),
                        exp("discard", 1.6, "busy box", t=1, num_steps=301, tokens_per_second=3120.0, starved=1)])
    out = run_status(cwd=repo).stdout
    assert re.search(r"#1 +keep +1\.500000 +[0-9a-f]{7} +812 steps +9\.5k tok/s +baseline", out), out
    assert "301 steps" in out and "busy box" in out and "[starved]" in out


def test_status_without_a_ledger_is_one_clear_line_and_exit_2(tmp_path):
    repo = git_repo(tmp_path / "repo")
    result = run_status(cwd=repo)
    assert result.returncode == 2
    assert result.stderr.startswith("error: no ledger at")
    assert len(result.stderr.strip().splitlines()) == 1


def test_status_on_an_empty_ledger_says_nothing_ran_yet(tmp_path):
    repo = git_repo(tmp_path / "repo")
    write_ledger(repo, [])
    result = run_status(cwd=repo)
    assert result.returncode == 0
    assert "ledger has no experiments yet" in result.stdout


def test_progress_comes_from_the_last_complete_progress_line(tmp_path):
    log = tmp_path / "run.log"
    log.write_text("profile: smoke\n"
                   "\rstep 00001 (10.0%) | loss: 6.9 | lrm: 1.00 | dt: 5ms | tok/s: 1 | mfu: 1.0% | epoch: 1 | remaining: 9s    "
                   "\rstep 00002 (42.5%) | loss: 6.1 | lrm: 1.00 | dt: 5ms | tok/s: 1 | mfu: 1.0% | epoch: 1 | remaining: 5s    "
                   "\rstep 00003 (5")  # a line still being written
    assert status.read_progress(str(log)) == dict(step=2, percent=42.5, remaining=5, phase="training")


def test_progress_phases_starting_evaluating_and_done(tmp_path):
    log = tmp_path / "run.log"
    log.write_text("profile: smoke\n")
    assert status.read_progress(str(log))["phase"] == "starting"
    log.write_text("\rstep 00009 (100.0%) | loss: 5 | remaining: 0s\neval:  50%|#####     | 4/8\r")
    assert status.read_progress(str(log))["phase"] == "evaluating"
    log.write_text("\rstep 00009 (100.0%) | loss: 5 | remaining: 0s\n---\nval_bpb:          1.0\n")
    assert status.read_progress(str(log))["phase"] == "done"
    assert status.read_progress(str(tmp_path / "missing.log")) is None


def test_progress_bar_is_proportional():
    assert status.bar(0, width=10) == "[..........]"
    assert status.bar(50, width=10) == "[#####.....]"
    assert status.bar(100, width=10) == "[##########]"


def test_watch_redraws_until_ctrl_c_and_exits_130(tmp_path):
    repo = git_repo(tmp_path / "repo")
    write_ledger(repo, [exp("keep", 1.5, "baseline", t=0)])
    proc = subprocess.Popen([sys.executable, "-m", "autoresearch.cli", "status", "--watch", "--interval", "0.3"],
                            cwd=repo, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    time.sleep(3)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=20)
    assert proc.returncode == 130, err
    assert out.count(status.CLEAR) >= 2
    assert "Ctrl-C to stop" in out


def test_watch_interval_must_be_positive(tmp_path):
    result = run_status("--watch", "--interval", "0", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.startswith("error: --interval must be a positive number")


def test_status_says_noise_not_measured_until_the_campaign_measured_it(tmp_path):
    repo = git_repo(tmp_path / "repo")
    ledger = write_ledger(repo, [exp("keep", 1.5, "baseline", t=0)], [dict(tag="night", min_delta=0.002)])
    assert "  noise not measured" in status.status_text(ledger)
    ledger.save_campaign(tag="night", noise_std=0.0007)
    text = status.status_text(ledger)
    assert "  noise std 0.000700" in text and "noise not measured" not in text


def test_status_json_is_a_snapshot_of_every_campaign(tmp_path):
    repo = git_repo(tmp_path / "repo")
    log = tmp_path / "run.log"
    log.write_text("profile: smoke\nstep 00002 (42.5%) | loss: 6.100000 | dt: 5ms | mfu: 1.0% | remaining: 5s\n")
    write_ledger(repo, [exp("keep", 1.5, "baseline", t=0), exp("crash", None, "oops", t=1, cause="NaN loss"),
                        exp("crash", None, "cut short", t=1, cause="interrupted (SIGINT)"),
                        exp("keep", 1.4, "better", t=2), exp("discard", 1.45, "worse", t=3),
                        dict(tag="night", status="running", description="now", worker="w1", started_at=time.time() - 30,
                             timeout_s=750, log_path=str(log)),
                        exp("keep", 2.0, "other campaign", tag="day", t=4)],
                 [dict(tag="night", min_delta=0.002, noise_std=None, profile="smoke"),
                  dict(tag="day", noise_std=0.0007)])
    result = run_status("--json", cwd=repo)
    assert result.returncode == 0, result.stderr
    snapshot = json.loads(result.stdout)
    night, day = (next(c for c in snapshot["campaigns"] if c["tag"] == tag) for tag in ("night", "day"))
    assert night["best"] == 1.4 and night["noise_std"] is None and day["noise_std"] == 0.0007
    assert night["counts"] == dict(running=1, keep=2, discard=1, crash=1, timeout=0, invalid=0, screened=0,
                                   interrupted=1)  # a run a stop cut short is no crash of its program
    [running] = night["running"]
    assert (running["description"], running["worker"], running["timeout_s"]) == ("now", "w1", 750)
    assert 29 <= running["elapsed_s"] < 120
    assert running["progress"] == dict(step=2, percent=42.5, remaining=5, phase="training")
    assert [(r["status"], r["description"]) for r in night["last_results"]] == \
        [("keep", "baseline"), ("crash", "oops"), ("keep", "better"), ("discard", "worse")]
    assert night["last_results"][1]["val_bpb"] is None and night["last_results"][1]["cause"] == "NaN loss"
    assert day["running"] == [] and day["best"] == 2.0


def test_status_counts_screened_runs_apart(tmp_path):
    repo = git_repo(tmp_path / "repo")
    ledger = write_ledger(repo, [exp("keep", 1.5, "baseline", t=0, is_baseline=1),
                                 exp("screened", 1.3, "screen 30%: DEPTH 4 -> 6", t=1)])
    text = status.status_text(ledger)
    assert "2 done, baseline + 0 kept, 1 screened, best 1.500000" in text
    assert json.loads(status.status_json(ledger))["campaigns"][0]["counts"]["screened"] == 1


def test_status_of_one_campaign_shows_it_running_or_not_and_only_it(tmp_path):
    repo = git_repo(tmp_path / "repo")
    write_ledger(repo, [exp("keep", 1.5, "baseline", t=0), exp("keep", 2.0, "other campaign", tag="day", t=1)],
                 [dict(tag="night"), dict(tag="day")])
    out = run_status("--tag", "night", cwd=repo).stdout
    assert "campaign night" in out and "campaign day" not in out and "No campaign is running" not in out
    snapshot = json.loads(run_status("--tag", "day", "--json", cwd=repo).stdout)
    assert [c["tag"] for c in snapshot["campaigns"]] == ["day"]


def test_status_of_a_campaign_the_ledger_lacks_is_one_line_naming_those_it_has(tmp_path):
    repo = git_repo(tmp_path / "repo")
    write_ledger(repo, [exp("keep", 1.5, "baseline", t=0)], [dict(tag="night")])
    result = run_status("--tag", "nigth", cwd=repo)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.startswith("error: no campaign 'nigth' in ") and result.stderr.strip().endswith("(campaigns: night)")


def test_status_leaves_out_a_device_no_run_recorded(tmp_path):
    """An invalid run (it never trained) records its profile but no device: no literal 'None'."""
    repo = git_repo(tmp_path / "repo")
    ledger = write_ledger(repo, [dict(exp("invalid", None, "edits prepare.py", tag="t2", t=0), device=None)],
                          [dict(tag="t2", profile="smoke")])
    text = status.status_text(ledger)
    assert "campaign t2 [smoke]: 1 done" in text and "None" not in text


def test_status_shows_timeout_and_invalid_as_themselves_in_the_val_column(tmp_path):
    repo = git_repo(tmp_path / "repo")
    ledger = write_ledger(repo, [exp("keep", 1.5, "baseline", t=0, is_baseline=1),
                                 exp("crash", None, "oops", t=1, cause="NaN loss"),
                                 exp("timeout", None, "slow", t=2, cause="killed after 30s"),
                                 exp("invalid", None, "edits prepare", t=3, cause="prepare.py changed")])
    lines = {line.split()[1]: line for line in status.status_text(ledger).splitlines() if line.startswith("    #")}
    assert re.search(r"crash +crashed ", lines["crash"]), lines
    assert re.search(r"timeout +timeout ", lines["timeout"]) and "crashed" not in lines["timeout"], lines
    assert re.search(r"invalid +invalid ", lines["invalid"]) and "crashed" not in lines["invalid"], lines
    # the commit column lines up whatever the val column holds
    assert len({re.search(r" ([0-9a-f]{7}) ", line).start(1) for line in lines.values()}) == 1, lines


def test_status_counts_the_baseline_apart_from_the_kept_experiments(tmp_path):
    repo = git_repo(tmp_path / "repo")
    ledger = write_ledger(repo, [exp("keep", 1.5, "baseline", t=0, is_baseline=1)])
    text = status.status_text(ledger)
    assert "campaign night [smoke / cpu]: 1 done, baseline + 0 kept, best 1.500000" in text
    ledger.start_experiment(**exp("keep", 1.4, "better", t=1, is_baseline=0))
    assert "2 done, baseline + 1 kept, best 1.400000" in status.status_text(ledger)


def test_status_counts_the_baseline_the_same_where_the_ledger_does_not_mark_it(tmp_path):
    """An older ledger has no is_baseline: its first result is the baseline, as the report says."""
    repo = git_repo(tmp_path / "repo")
    ledger = write_ledger(repo, [exp("crash", None, "baseline", t=0), exp("keep", 1.5, "baseline", t=1),
                                 exp("keep", 1.4, "better", t=2)])
    assert "3 done, baseline + 1 kept, best 1.400000" in status.status_text(ledger)


def test_status_says_the_noise_is_pending_while_baseline_repeats_are_to_run(tmp_path):
    repo = git_repo(tmp_path / "repo")
    ledger = write_ledger(repo, [exp("keep", 1.5, "baseline", t=0, is_baseline=1)],
                          [dict(tag="night", min_delta=0.002, baseline_repeats=3)])
    text = status.status_text(ledger)
    assert "noise pending: 1 of 3 baseline runs done" in text and "--baseline-repeats" not in text
    ledger.start_experiment(**exp("discard", 1.51, "baseline (repeat 2/3, seed 1)", t=1, is_baseline=1,
                                  cause="baseline repeat on seed 1: measures the noise"))
    assert "noise pending: 2 of 3 baseline runs done" in status.status_text(ledger)
    ledger.save_campaign(tag="night", baseline_repeats=1)
    assert "noise not measured (loop --baseline-repeats K)" in status.status_text(ledger)


def test_a_campaign_whose_only_run_a_stop_cut_short_says_nothing_finished(tmp_path):
    repo = git_repo(tmp_path / "repo")
    write_ledger(repo, [exp("crash", None, "baseline", tag="cut", t=0, cause="interrupted (SIGINT)")],
                 [dict(tag="cut", profile="smoke")])
    result = run_status("--tag", "cut", cwd=repo)
    assert result.returncode == 0, result.stderr
    assert "campaign cut [smoke]: no finished experiment yet" in result.stdout
