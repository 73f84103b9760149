"""
`autoresearch loop`: the baseline and its noise, proposals run and recorded, --confirm, budgets,
back-off on proposer errors, invalid proposals, resume after kill -9, a clean stop on SIGTERM/SIGINT.

The end-to-end campaign uses the real train.py on the smoke profile with a budget of a few seconds.
The other tests use a stand-in train.py that prints a summary block at once, its val_bpb a function
of its knobs and the seed (and that can hang on its Nth run), so they check the harness in seconds.
"""

import io
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from autoresearch import loop as loop_module
from autoresearch.ledger import Ledger
from autoresearch.proposers import ProposalError, ProposerConfigError
from standins.llm_server import LLMServer
from conftest import alive, git
from standins.scripted import Scripted
from standins.summary import SUMMARY

ROOT = Path(__file__).resolve().parents[1]
STANDINS = Path(__file__).resolve().parent / "standins"

STANDIN_TRAIN = textwrap.dedent("""\
    import os, time
    MATRIX_LR = 0.04          # Muon
    DEPTH = 4                 # layers
    LUCKY = 0.0               # how much better seed 42 looks than the others
    TRAINED = 1.0             # the training seconds its summary claims
    seed = int(os.environ.get("AUTORESEARCH_SEED", "42"))
    if os.environ.get("STANDIN_HANG_AT"):
        with open(os.environ["STANDIN_COUNTER"], "a") as f:
            f.write("run\\n")
        if len(open(os.environ["STANDIN_COUNTER"]).read().split()) == int(os.environ["STANDIN_HANG_AT"]):
            with open(os.environ["STANDIN_PID"], "w") as f:
                f.write(str(os.getpid()))
            print("step 00001 (1.0%) | loss: 9.000000", flush=True)
            time.sleep(600)
    val = 1.0 + (MATRIX_LR - 0.05) ** 2 * 100 + 0.01 * abs(DEPTH - 5) + 0.001 * (seed - 42)
    val -= LUCKY if seed == 42 else 0.0
    """) + SUMMARY


@pytest.fixture
def repo(campaign_repo, printed_metric):
    """The campaign repo (branch main) with the stand-in train.py committed."""
    (campaign_repo / "train.py").write_text(STANDIN_TRAIN)
    git(campaign_repo, "commit", "-qam", "stand-in train.py")
    return campaign_repo


def one_baseline(args):
    """The tests of other behaviours than the noise measurement run the baseline once."""
    return list(args) if "--baseline-repeats" in args else [*args, "--baseline-repeats", "1"]


def cli(repo, *args, env=None, **kw):
    return subprocess.run([sys.executable, "-m", "autoresearch.cli", "loop", *one_baseline(args)], cwd=repo,
                          capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
                          **kw)


def start(repo, *args, env=None):
    return subprocess.Popen([sys.executable, "-m", "autoresearch.cli", "loop", *one_baseline(args)], cwd=repo,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})})


def rows(repo, tag="t"):
    return Ledger(repo=repo).experiments(tag=tag)


def results_tsv(repo):
    return [line.split("\t") for line in (repo / "results.tsv").read_text().splitlines()[1:]]


def assert_consistent(repo, tag="t"):
    """Tree clean, branch on the last keep, ledger and results.tsv row for row, no row left running."""
    experiments = rows(repo, tag)
    assert git(repo, "status", "--porcelain") == ""
    assert git(repo, "rev-parse", "--abbrev-ref", "HEAD") == f"autoresearch/{tag}"
    keeps = [r for r in experiments if r["status"] == "keep"]
    assert git(repo, "rev-parse", "HEAD") == keeps[-1]["commit_sha"]
    assert not [r for r in experiments if r["status"] == "running"]
    tsv = results_tsv(repo)
    counted = [r for r in experiments if not interrupted_row(r)]  # a run a stop cut short is no result
    assert len(tsv) == len(counted)
    for line, row in zip(tsv, counted):
        assert line[0] == (row["commit_sha"] or "")[:7]
        assert line[3] == (row["status"] if row["status"] in ("keep", "discard") else "crash")
    return experiments


def run_loop(repo, proposer, **options):
    out = io.StringIO()
    options.setdefault("backoff", 0.01)
    options.setdefault("baseline_repeats", 1)
    code = loop_module.Loop(str(repo), options.pop("tag", "t"), "search", proposer=proposer, out=out,
                            **options).main()
    return code, out.getvalue()


# ------------------------------------------------------------------------------------ end to end

def test_search_campaign_end_to_end_with_the_real_train_py(campaign_repo, monkeypatch):
    monkeypatch.setenv("AUTORESEARCH_TIME_BUDGET", "3")
    monkeypatch.setenv("AUTORESEARCH_STARVED_SHARE", "1")  # a busy test machine re-runs nothing here
    proc = cli(campaign_repo, "--proposer", "search", "--tag", "e2e", "--max-experiments", "3", timeout=600)
    assert proc.returncode == 0, proc.stderr
    experiments = assert_consistent(campaign_repo, "e2e")
    assert len(experiments) == 3
    assert experiments[0]["description"] == "baseline" and experiments[0]["status"] == "keep"
    assert all(r["status"] in ("keep", "discard") and r["val_bpb"] > 0 for r in experiments), \
        [(r["status"], r["cause"], r["training_seconds"], r["description"]) for r in experiments]
    assert all(r["proposer"] == "search" and r["profile"] == "smoke" for r in experiments)
    for row in experiments[1:]:
        assert " -> " in row["description"]
        assert git(campaign_repo, "diff", "--name-only", row["parent_commit"], row["commit_sha"]) == "train.py"
        if row["status"] == "discard":  # the discarded commit stays reachable
            assert git(campaign_repo, "rev-parse", f"refs/autoresearch/e2e/{row['commit_sha'][:7]}") == row["commit_sha"]
    lines = [line for line in proc.stdout.splitlines() if line.startswith("#")]
    assert [line.split()[:2] for line in lines] == [[f"#{r['id']}", r["status"]] for r in experiments]
    assert "done: --max-experiments 3 reached" in proc.stdout


# --------------------------------------------------------------------------------- baseline, noise

def test_baseline_repeats_measure_the_noise_and_set_the_keep_threshold(repo):
    code, out = run_loop(repo, Scripted([]), baseline_repeats=3, min_delta=0.0001, max_experiments=3)
    assert code == 0
    experiments = assert_consistent(repo)
    assert [(r["status"], r["is_baseline"], r["seed"]) for r in experiments] == [
        ("keep", 1, 42), ("discard", 1, 43), ("discard", 1, 44)]
    noise = statistics.stdev(r["val_bpb"] for r in experiments)
    campaign = Ledger(repo=repo).campaign("t")
    assert campaign["noise_std"] == pytest.approx(noise) and campaign["baseline_repeats"] == 3
    assert f"keep threshold = max(min_delta 0.0001, 2 x {noise:.6f}) = {2 * noise:.6f}" in out
    assert any(e["kind"] == "threshold" for e in Ledger(repo=repo).events(tag="t"))


def test_the_noise_is_measured_by_default_on_three_baseline_runs(repo):
    out = io.StringIO()
    loop_module.Loop(str(repo), "t", "search", proposer=Scripted([]), out=out, max_experiments=3).main()
    experiments = assert_consistent(repo)
    assert [(r["is_baseline"], r["seed"]) for r in experiments] == [(1, 42), (1, 43), (1, 44)]
    assert Ledger(repo=repo).campaign("t")["noise_std"] > 0


def test_a_starved_would_be_keep_is_run_again_before_it_counts(repo, tmp_path, monkeypatch):
    monkeypatch.setenv("STANDIN_CPU_SHARE", "0,0.6,0")  # the gain's first run shared the CPUs
    monkeypatch.setenv("STANDIN_CPU_SHARE_RUNS", str(tmp_path / "runs"))
    code, out = run_loop(repo, Scripted([("gain", {"MATRIX_LR": 0.05})]), max_experiments=3)
    experiments = assert_consistent(repo)
    assert [(r["description"], r["status"], r["starved"]) for r in experiments] == [
        ("baseline", "keep", 0), ("gain", "discard", 1), ("gain [re-run: #2 was starved]", "keep", 0)]
    assert experiments[1]["cause"] == "starved: other processes took 60% of the CPUs during training; re-run"
    assert experiments[2]["retry_of"] == experiments[1]["id"] and experiments[2]["cost_usd"] is None
    assert git(repo, "show", "HEAD:train.py") == git(repo, "show", f"{experiments[1]['commit_sha']}:train.py")


def test_a_would_be_keep_that_trained_past_its_budget_while_starved_is_run_again_and_never_kept(
        repo, tmp_path, monkeypatch):
    """A run that keeps the machine busy (kernel work for its own I/O counts as others') trains on past
    its budget: judged, run again as any starved would-be keep, and never kept."""
    monkeypatch.setenv("STANDIN_CPU_SHARE", "0,0.6")
    monkeypatch.setenv("STANDIN_CPU_SHARE_RUNS", str(tmp_path / "runs"))
    code, out = run_loop(repo, Scripted([("gain, trained 40 s", {"MATRIX_LR": 0.05, "TRAINED": 40.0})]),
                         max_experiments=4)
    experiments = assert_consistent(repo)
    assert [(r["status"], r["starved"]) for r in experiments] == [("keep", 0)] + [("discard", 1)] * 3
    assert [r["retry_of"] for r in experiments[2:]] == [experiments[1]["id"], experiments[2]["id"]]
    assert experiments[-1]["cause"].startswith("starved past its budget: trained 40 s by its own count")
    assert "Campaign t: 4 experiments, baseline + 0 kept, best val_bpb" in out  # counted as status counts


def test_a_starved_discard_says_on_its_line_that_the_machine_was_busy(repo, tmp_path, monkeypatch):
    """It stands (a discard costs nothing to undo), but its number says more about the machine than
    about the change: the line says so, and the search learns nothing from it."""
    monkeypatch.setenv("STANDIN_CPU_SHARE", "0,0.6")
    monkeypatch.setenv("STANDIN_CPU_SHARE_RUNS", str(tmp_path / "runs"))
    code, out = run_loop(repo, Scripted([("worse", {"MATRIX_LR": 0.02})]), max_experiments=2)
    experiments = assert_consistent(repo)
    assert [(r["description"], r["status"], r["starved"]) for r in experiments] == [
        ("baseline", "keep", 0), ("worse", "discard", 1)]
    assert "worse  [starved: other processes took 60% of the CPUs during training]" in out


def test_a_starved_baseline_is_run_again_and_is_no_noise_sample(repo, tmp_path, monkeypatch):
    monkeypatch.setenv("STANDIN_CPU_SHARE", "0.9,0")
    monkeypatch.setenv("STANDIN_CPU_SHARE_RUNS", str(tmp_path / "runs"))
    run_loop(repo, Scripted([]), baseline_repeats=2, max_experiments=3)
    experiments = assert_consistent(repo)
    assert [(r["status"], r["starved"], r["retry_of"]) for r in experiments] == [
        ("discard", 1, None), ("keep", 0, 1), ("discard", 0, None)]
    assert Ledger(repo=repo).campaign("t")["noise_std"] == pytest.approx(
        statistics.stdev([experiments[1]["val_bpb"], experiments[2]["val_bpb"]]))


def test_a_starved_baseline_repeat_is_run_again_and_is_no_noise_sample(repo, tmp_path, monkeypatch):
    monkeypatch.setenv("STANDIN_CPU_SHARE", "0,0.9,0,0")
    monkeypatch.setenv("STANDIN_CPU_SHARE_RUNS", str(tmp_path / "runs"))
    run_loop(repo, Scripted([("gain", {"MATRIX_LR": 0.05})]), baseline_repeats=3, max_experiments=4)
    experiments = assert_consistent(repo)
    assert [(r["status"], r["starved"], r["retry_of"], r["seed"]) for r in experiments] == [
        ("keep", 0, None, 42), ("discard", 1, None, 43), ("discard", 0, 2, 43), ("discard", 0, None, 44)]
    assert experiments[1]["cause"].startswith("starved: ")
    assert Ledger(repo=repo).campaign("t")["noise_std"] == pytest.approx(
        statistics.stdev([experiments[i]["val_bpb"] for i in (0, 2, 3)]))


def test_a_gain_within_the_threshold_is_discarded(repo):
    code, out = run_loop(repo, Scripted([("tiny gain", {"MATRIX_LR": 0.0401}), ("real gain", {"MATRIX_LR": 0.05})]),
                         min_delta=0.005, max_experiments=3)
    experiments = assert_consistent(repo)
    assert [(r["description"], r["status"]) for r in experiments] == [
        ("baseline", "keep"), ("tiny gain", "discard"), ("real gain", "keep")]
    assert experiments[1]["threshold"] == 0.005


def test_a_change_must_beat_the_mean_of_the_baseline_runs_not_the_first_one(repo):
    (repo / "train.py").write_text(STANDIN_TRAIN.replace("LUCKY = 0.0 ", "LUCKY = -0.02"))  # seed 42 unlucky
    git(repo, "commit", "-qam", "a baseline whose first run draws high")
    script = [("within the noise", {"MATRIX_LR": 0.045, "LUCKY": 0.0}),
              ("real gain", {"MATRIX_LR": 0.05, "DEPTH": 5, "LUCKY": 0.0})]
    run_loop(repo, Scripted(script), baseline_repeats=3, max_experiments=5)
    experiments = assert_consistent(repo)
    baseline = statistics.fmean(r["val_bpb"] for r in experiments[:3])
    threshold = 2 * statistics.stdev(r["val_bpb"] for r in experiments[:3])
    within, real = experiments[3:]
    assert experiments[0]["val_bpb"] - threshold > within["val_bpb"] > baseline - threshold  # beat only the 1st
    assert (within["status"], real["status"]) == ("discard", "keep")
    assert within["best_before"] == pytest.approx(baseline)
    assert Ledger(repo=repo).reference("t") == real["val_bpb"]


def test_confirm_keeps_a_gain_only_when_a_rerun_on_a_new_seed_also_beats_the_best(repo):
    script = [("lucky seed only", {"MATRIX_LR": 0.03, "LUCKY": 0.5}), ("real gain", {"MATRIX_LR": 0.05})]
    code, out = run_loop(repo, Scripted(script), confirm=True, max_experiments=5)
    experiments = assert_consistent(repo)
    assert [(r["description"], r["status"], r["seed"]) for r in experiments] == [
        ("baseline", "keep", 42),
        ("lucky seed only", "discard", 42), ("lucky seed only [confirm, seed 43]", "discard", 43),
        ("real gain", "keep", 42), ("real gain [confirm, seed 44]", "keep", 44)]
    assert experiments[1]["cause"].startswith("not confirmed: the re-run on seed 43 gave discard")
    assert experiments[1]["val_bpb"] < experiments[0]["val_bpb"] < experiments[2]["val_bpb"]
    lucky = experiments[1]["commit_sha"]
    assert git(repo, "rev-parse", f"refs/autoresearch/t/{lucky[:7]}") == lucky
    assert "MATRIX_LR = 0.05" in (repo / "train.py").read_text()


def test_max_experiments_counts_baseline_repeats_confirmations_and_invalid_proposals(repo):
    script = [ProposalError("no usable reply"), ("gain", {"MATRIX_LR": 0.05}), ("more", {"DEPTH": 5})]
    code, out = run_loop(repo, Scripted(script), baseline_repeats=2, confirm=True, max_experiments=5)
    experiments = assert_consistent(repo)
    assert len(experiments) == 5
    assert [r["status"] for r in experiments] == ["keep", "discard", "invalid", "keep", "keep"]
    assert "done: --max-experiments 5 reached" in out


# ------------------------------------------------------------------------------- proposals, errors

def test_each_experiment_is_printed_and_recorded_with_its_proposer_cost(repo):
    code, out = run_loop(repo, Scripted([("DEPTH 4 -> 5", {"DEPTH": 5})]), max_experiments=2)
    experiments = assert_consistent(repo)
    last = experiments[-1]
    assert (last["model"], last["prompt_tokens"], last["completion_tokens"], last["cost_usd"]) == ("scripted-1", 10, 5, 0.5)
    bar = last["best_before"] - last["threshold"]  # the reference less the threshold: what it had to beat
    assert f"#{last['id']:<4d} keep     val_bpb  {last['val_bpb']:.6f}  to beat  {bar:.6f}  DEPTH 4 -> 5" in out
    assert f"#{experiments[0]['id']:<4d} keep     val_bpb  {experiments[0]['val_bpb']:.6f}  to beat {'-':>9}  baseline" in out


def test_proposer_gets_the_best_train_py_history_and_last_failure(repo):
    script = [("breaks", {"DEPTH": "'x'"}), ("fine", {"DEPTH": 5}), ("again", {"MATRIX_LR": 0.05})]
    proposer = Scripted(script)
    run_loop(repo, proposer, max_experiments=4)
    experiments = rows(repo)
    assert experiments[1]["status"] == "crash"
    assert proposer.calls[1]["last_failure"].startswith("experiment #2 (breaks) ended crash")
    assert proposer.calls[2]["last_failure"] is None
    assert [r["description"] for r in proposer.calls[2]["history"]] == ["baseline", "breaks", "fine"]


def test_invalid_proposal_is_recorded_as_an_invalid_experiment_and_the_loop_goes_on(repo):
    error = ProposalError("no usable reply in 3 attempts: no code", model="m", prompt_tokens=300,
                          completion_tokens=30, cost_usd=0.25)
    code, out = run_loop(repo, Scripted([error, ("gain", {"MATRIX_LR": 0.05})]), max_experiments=3)
    experiments = assert_consistent(repo)
    invalid = experiments[1]
    assert invalid["status"] == "invalid" and invalid["cause"] == "proposal: no usable reply in 3 attempts: no code"
    assert (invalid["prompt_tokens"], invalid["cost_usd"], invalid["commit_sha"]) == (300, 0.25, None)
    assert experiments[2]["status"] == "keep"


def test_proposer_errors_back_off_and_retry_without_losing_an_experiment(repo):
    script = [RuntimeError("connection reset"), TimeoutError("read timed out"), ("gain", {"MATRIX_LR": 0.05})]
    started = time.time()
    code, out = run_loop(repo, Scripted(script), max_experiments=2, backoff=0.2)
    assert time.time() - started >= 0.2 + 0.4  # 0.2 s, then 0.4 s
    experiments = assert_consistent(repo)
    assert [r["description"] for r in experiments] == ["baseline", "gain"]
    errors = [e["message"] for e in Ledger(repo=repo).events(tag="t") if e["kind"] == "proposer_error"]
    assert len(errors) == 2 and "RuntimeError: connection reset" in errors[0] and "retrying in 0 s" in errors[0]


def test_proposer_config_error_before_any_proposal_stops_with_one_line(repo):
    with pytest.raises(loop_module.LoopError, match="OPENAI_API_KEY"):
        run_loop(repo, Scripted([ProposerConfigError("OPENAI_API_KEY is not set: export it")]), max_experiments=3)


def test_unusable_proposer_settings_exit_2_with_one_line_before_touching_the_checkout(repo):
    env = {k: v for k, v in os.environ.items() if k not in ("OPENAI_API_KEY", "OPENAI_BASE_URL")}
    proc = subprocess.run([sys.executable, "-m", "autoresearch.cli", "loop", "--proposer", "openai", "--tag", "t"],
                          cwd=repo, capture_output=True, text=True, env=env)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "error: OPENAI_API_KEY is not set: export it, or pass --base-url for a local server that needs no key"]
    assert git(repo, "rev-parse", "--abbrev-ref", "HEAD") == "main"


def test_an_unreachable_proposer_fails_before_the_baseline_naming_its_url(repo):
    started = time.time()
    proc = cli(repo, "--proposer", "openai", "--base-url", "http://127.0.0.1:9/v1", "--tag", "t",
               env={"OPENAI_API_KEY": "sk-test"})
    assert proc.returncode == 2 and time.time() - started < 60
    [line] = proc.stderr.strip().splitlines()
    assert line.startswith("error: cannot reach the openai proposer at http://127.0.0.1:9/v1")
    assert rows(repo) == [] and git(repo, "rev-parse", "--abbrev-ref", "HEAD") == "main"


def test_a_proposer_whose_key_is_refused_fails_before_the_baseline(repo):
    with LLMServer([EDIT], refuse_key=True) as server:
        proc = cli(repo, "--proposer", "anthropic", "--base-url", server.url, "--tag", "t",
                   env={"ANTHROPIC_API_KEY": "sk-wrong"})
    assert proc.returncode == 2
    assert proc.stderr.startswith(f"error: the anthropic API at {server.url}") and "refused the key" in proc.stderr
    assert rows(repo) == [] and server.requests == []


def test_a_campaign_on_another_profile_than_the_checkout_now_selects_refuses_to_start(repo, tmp_path, smoke_cache):
    cache = tmp_path / "cache"  # a cache of its own: this test prepares another profile, which becomes the default
    shutil.copytree(Path(smoke_cache) / "smoke", cache / "smoke")
    (cache / "last_profile").write_text("smoke")
    env = {"AUTORESEARCH_CACHE": str(cache), "AUTORESEARCH_PROFILE": ""}
    assert cli(repo, "--tag", "t", "--max-experiments", "1", env=env).returncode == 0
    subprocess.run([sys.executable, str(ROOT / "prepare.py"), "--profile", "cpu"], check=True, capture_output=True,
                   env={**os.environ, **env})

    proc = cli(repo, "--tag", "t", "--max-experiments", "8", env=env)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "error: campaign t runs on profile smoke, but this checkout now selects cpu (the last prepare.py, or "
        "AUTORESEARCH_PROFILE); set AUTORESEARCH_PROFILE=smoke, or start a new campaign with another tag"]
    assert len(rows(repo)) == 1
    assert cli(repo, "--tag", "t", "--max-experiments", "2", env={**env, "AUTORESEARCH_PROFILE": "smoke"}).returncode == 0


def test_a_campaign_whose_data_was_prepared_from_another_source_refuses_to_start(repo, tmp_path, smoke_cache):
    cache = tmp_path / "cache"
    shutil.copytree(Path(smoke_cache) / "smoke", cache / "smoke")
    env = {"AUTORESEARCH_CACHE": str(cache)}
    assert cli(repo, "--tag", "t", "--max-experiments", "1", env=env).returncode == 0
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i in range(40):
        (corpus / f"doc{i:02d}.txt").write_text(f"Document {i}.\n\n" + "The state of our union is strong. " * (20 + i))
    subprocess.run([sys.executable, str(ROOT / "prepare.py"), "--profile", "smoke", "--source", f"files:{corpus}"],
                   check=True, capture_output=True, env={**os.environ, **env})

    proc = cli(repo, "--tag", "t", "--max-experiments", "8", env=env)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: the prepared data of profile smoke is not the data campaign t started with")
    assert len(rows(repo)) == 1


def test_the_loop_says_its_profile_budget_data_device_and_sandbox_before_it_starts(repo):
    proc = cli(repo, "--tag", "t", "--max-experiments", "1")
    assert proc.returncode == 0, proc.stderr
    assert f"profile smoke: 15 s of training per experiment, data sotu; device cpu ({os.cpu_count()} cores); " \
           f"sandbox " in proc.stdout
    assert "campaign t: 0 experiments so far" in proc.stdout and "noise not measured" in proc.stdout


def test_bad_tag_is_a_one_line_error(repo):
    proc = cli(repo, "--tag", "no spaces/..", "--max-experiments", "1")
    assert proc.returncode == 2 and proc.stderr.startswith("error: --tag 'no spaces/..' cannot name a branch")


# ------------------------------------------------------------------------------- API and CLI proposers

EDIT = ("DESCRIPTION: MATRIX_LR 0.04 -> 0.05\n<<<<<<< SEARCH\nMATRIX_LR = 0.04          # Muon\n=======\n"
        "MATRIX_LR = 0.05          # Muon\n>>>>>>> REPLACE\n")


def test_openai_proposer_in_the_loop_records_usage_cost_and_an_invalid_reply(repo):
    with LLMServer([EDIT, "no code", "no code", "still no code"]) as server:
        proc = cli(repo, "--proposer", "openai", "--model", "gpt-4o", "--base-url", server.url + "/v1",
                   "--tag", "t", "--max-experiments", "3", env={"OPENAI_API_KEY": "sk-test"})
    assert proc.returncode == 0, proc.stderr
    experiments = assert_consistent(repo)
    assert [(r["description"], r["status"]) for r in experiments] == [
        ("baseline", "keep"), ("MATRIX_LR 0.04 -> 0.05", "keep"), ("(openai proposal)", "invalid")]
    cost = (1000 * 2.50 + 200 * 10.00) / 1e6
    assert (experiments[1]["proposer"], experiments[1]["model"], experiments[1]["cost_usd"]) == ("openai", "gpt-4o", pytest.approx(cost))
    assert experiments[2]["prompt_tokens"] == 3000 and experiments[2]["cost_usd"] == pytest.approx(3 * cost)


def edit(old, new):
    return (f"DESCRIPTION: MATRIX_LR {old} -> {new}\n<<<<<<< SEARCH\nMATRIX_LR = {old}\n=======\n"
            f"MATRIX_LR = {new}\n>>>>>>> REPLACE\n")


def test_max_cost_stops_the_loop_once_the_llm_spend_reaches_it(repo):
    with LLMServer([edit(0.04, 0.05), edit(0.05, 0.055), edit(0.055, 0.06)]) as server:
        proc = cli(repo, "--proposer", "anthropic", "--model", "claude-opus-4-1", "--base-url", server.url,
                   "--tag", "t", "--max-cost", "0.06", env={"ANTHROPIC_API_KEY": "sk-ant-test"})
        asked = len(server.requests)
    assert proc.returncode == 0, proc.stderr
    per_call = (1000 * 15 + 200 * 75) / 1e6  # 0.03 USD
    assert asked == 2 and "--max-cost 0.06 USD reached" in proc.stdout
    experiments = assert_consistent(repo)
    assert [r["description"] for r in experiments] == ["baseline", "MATRIX_LR 0.04 -> 0.05", "MATRIX_LR 0.05 -> 0.055"]
    assert sum(r["cost_usd"] or 0 for r in experiments) == pytest.approx(2 * per_call)


def test_claude_proposer_in_the_loop_and_an_edit_outside_train_py_is_invalid(repo):
    env = {"PATH": f"{STANDINS}{os.pathsep}{os.environ['PATH']}"}
    proc = cli(repo, "--proposer", "claude", "--tag", "t", "--max-experiments", "2", env=env)
    assert proc.returncode == 0, proc.stderr
    proc = cli(repo, "--proposer", "codex", "--tag", "t", "--max-experiments", "3",
               env={**env, "STANDIN_MODE": "edit_prepare", "AUTORESEARCH_PASS_ENV": "STANDIN_MODE"})
    assert proc.returncode == 0, proc.stderr
    experiments = assert_consistent(repo)
    assert [(r["proposer"], r["status"]) for r in experiments] == [("claude", "keep"), ("claude", "keep"), ("codex", "invalid")]
    assert experiments[1]["description"] == "MATRIX_LR 0.04 -> 0.05 (stand-in)" and experiments[1]["cost_usd"] == 0.0123
    assert "other than train.py (prepare.py)" in experiments[2]["cause"]
    assert git(repo, "diff", "main", "--", "prepare.py") == ""


# ------------------------------------------------------------------------------- budgets and resume

def test_a_resumed_campaign_counts_its_earlier_experiments(repo):
    assert cli(repo, "--tag", "t", "--max-experiments", "2").returncode == 0
    again = cli(repo, "--tag", "t", "--max-experiments", "2")
    assert again.returncode == 0 and "campaign t: 2 experiments so far" in again.stdout
    assert len(rows(repo)) == 2 and "--max-experiments 2 reached" in again.stdout
    assert cli(repo, "--tag", "t", "--max-experiments", "3").returncode == 0
    experiments = assert_consistent(repo)
    assert len(experiments) == 3 and [r["description"] for r in experiments].count("baseline") == 1


def test_ctrl_c_during_the_last_experiment_does_not_spend_it(repo, tmp_path):
    first = start(repo, "--tag", "t", "--max-experiments", "3", env=hang_env(tmp_path, 3))
    wait_for_running(repo, tmp_path, first)
    first.send_signal(signal.SIGINT)
    assert first.wait(timeout=30) == 130
    cut = rows(repo)[-1]
    assert interrupted_row(cut)

    again = cli(repo, "--tag", "t", "--max-experiments", "3")
    assert again.returncode == 0, again.stderr
    experiments = assert_consistent(repo)
    assert len(experiments) == 4 and experiments[-1]["retry_of"] == cut["id"]
    assert experiments[-1]["description"] == f"{cut['description']} [re-run of #{cut['id']}]"
    assert "done: --max-experiments 3 reached (3 experiments" in again.stdout


def interrupted_row(row):
    return row["status"] == "crash" and row["cause"].startswith("interrupted")


def test_hours_budget_starts_no_experiment_after_the_deadline(repo):
    started = time.time()
    proc = cli(repo, "--tag", "t", "--hours", "0.0005")  # 1.8 s
    assert proc.returncode == 0 and "--hours reached" in proc.stdout
    assert time.time() - started < 30
    assert_consistent(repo)


def hang_env(tmp_path, at):
    return {"STANDIN_HANG_AT": str(at), "STANDIN_COUNTER": str(tmp_path / "runs"), "STANDIN_PID": str(tmp_path / "pid"),
            "AUTORESEARCH_PASS_ENV": "STANDIN_HANG_AT,STANDIN_COUNTER,STANDIN_PID"}


def wait_for_running(repo, tmp_path, proc, seconds=60):
    deadline = time.time() + seconds
    while time.time() < deadline:
        if (tmp_path / "pid").exists() and (tmp_path / "pid").read_text() and any(
                r["status"] == "running" for r in rows(repo)):
            return int((tmp_path / "pid").read_text())
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.2)
    raise AssertionError("the hanging experiment never started")


def test_loop_killed_mid_run_resumes_without_losing_or_duplicating_an_experiment(repo, tmp_path):
    first = start(repo, "--tag", "t", "--max-experiments", "4", env=hang_env(tmp_path, 2))
    train_pid = wait_for_running(repo, tmp_path, first)
    running = [r for r in rows(repo) if r["status"] == "running"][0]
    first.kill()  # kill -9: no handler runs
    first.wait()
    os.killpg(train_pid, signal.SIGKILL)  # a reboot takes the training with it
    assert git(repo, "rev-parse", "HEAD") == running["commit_sha"]

    second = cli(repo, "--tag", "t", "--max-experiments", "4")
    assert second.returncode == 0, second.stderr
    assert f"recovered #{running['id']}" in second.stdout
    experiments = assert_consistent(repo)
    interrupted, again = experiments[1], experiments[2]
    assert (interrupted["id"], interrupted["status"]) == (running["id"], "crash")
    assert interrupted["cause"].startswith("interrupted")
    assert git(repo, "rev-parse", f"refs/autoresearch/t/{running['commit_sha'][:7]}") == running["commit_sha"]
    # the interrupted experiment is run again first, once, and only finished ones count
    assert again["retry_of"] == interrupted["id"] and again["status"] in ("keep", "discard")
    assert git(repo, "show", f"{again['commit_sha']}:train.py") == git(repo, "show", f"{interrupted['commit_sha']}:train.py")
    assert len(experiments) == 5 and [r["retry_of"] for r in experiments].count(interrupted["id"]) == 1


def test_sigterm_stops_the_loop_cleanly(repo, tmp_path):
    proc = start(repo, "--tag", "t", "--max-experiments", "5", env=hang_env(tmp_path, 2))
    train_pid = wait_for_running(repo, tmp_path, proc)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 143, err
    assert "stopped by SIGTERM" in err
    assert not alive(train_pid)
    experiments = assert_consistent(repo)
    assert [(r["status"], (r["cause"] or "")[:11]) for r in experiments] == [("keep", ""), ("crash", "interrupted")]
    assert "SIGTERM" in experiments[1]["cause"]


def test_ctrl_c_while_the_proposer_backs_off_stops_with_130(repo):
    with LLMServer([503] * 50) as server:
        proc = start(repo, "--proposer", "openai", "--base-url", server.url + "/v1", "--tag", "t",
                     "--backoff", "60", env={"OPENAI_API_KEY": "sk-test"})
        deadline = time.time() + 60
        while time.time() < deadline and not any(e["kind"] == "proposer_error" for e in Ledger(repo=repo).events()):
            time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert f"from {server.url}/v1" in out and "retrying in 60 s" in out and "stopped by SIGINT" in err
    assert [r["status"] for r in assert_consistent(repo)] == ["keep"]


def test_a_second_loop_in_the_same_checkout_is_refused(repo, tmp_path):
    first = start(repo, "--tag", "t", "--max-experiments", "3", env=hang_env(tmp_path, 2))
    try:
        wait_for_running(repo, tmp_path, first)
        second = cli(repo, "--tag", "t", "--max-experiments", "3")
        assert second.returncode == 2
        assert second.stderr.startswith(f"error: another `autoresearch loop` (pid {first.pid}) is running")
    finally:
        first.send_signal(signal.SIGTERM)
        first.communicate(timeout=30)


def test_a_stop_during_a_confirmation_run_leaves_the_candidate_unconfirmed_and_discarded(repo, tmp_path):
    env = {"PATH": f"{STANDINS}{os.pathsep}{os.environ['PATH']}", **hang_env(tmp_path, 3)}
    proc = start(repo, "--proposer", "claude", "--confirm", "--tag", "t", "--max-experiments", "5", env=env)
    wait_for_running(repo, tmp_path, proc)
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=30)
    assert proc.returncode == 143
    experiments = assert_consistent(repo)
    assert [r["status"] for r in experiments] == ["keep", "discard", "crash"]
    assert experiments[1]["cause"] == loop_module.UNCONFIRMED_STOP
    assert git(repo, "rev-parse", "HEAD") == experiments[0]["commit_sha"]


def test_after_a_failed_baseline_the_fix_is_what_the_loop_runs(repo):
    """The baseline failed three times and the loop said "fix train.py and start the loop again": the
    fix is run, not set aside for the broken base commit."""
    git(repo, "checkout", "-qb", "autoresearch/t")
    (repo / "train.py").write_text(STANDIN_TRAIN.replace("DEPTH = 4 ", "DEPTH = (4"))
    git(repo, "commit", "-qam", "broken train.py")
    with pytest.raises(loop_module.LoopError, match="the baseline failed 3 times in a row"):
        run_loop(repo, None, max_experiments=5)
    (repo / "train.py").write_text(STANDIN_TRAIN)
    git(repo, "commit", "-qam", "fix DEPTH")
    fixed = git(repo, "rev-parse", "HEAD")
    code, out = run_loop(repo, None, max_experiments=4)
    assert code == 0, out
    assert "restored" not in out and rows(repo)[3]["commit_sha"] == fixed and rows(repo)[3]["status"] == "keep"


def test_a_baseline_repeat_a_stop_cut_short_runs_again_on_its_seed(repo, tmp_path):
    proc = start(repo, "--tag", "t", "--max-experiments", "4", "--baseline-repeats", "3", env=hang_env(tmp_path, 2))
    train_pid = wait_for_running(repo, tmp_path, proc)
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=30)
    assert proc.returncode == 143 and not alive(train_pid)
    resumed = cli(repo, "--tag", "t", "--max-experiments", "4", "--baseline-repeats", "3")
    assert resumed.returncode == 0 and "Campaign t: 4 experiments" in resumed.stdout  # the cut run: none
    cut, again = rows(repo)[1], rows(repo)[2]
    assert interrupted_row(cut) and again["seed"] == cut["seed"] == 43
    assert again["description"] == cut["description"] == "baseline (repeat 2/3, seed 43)"


def test_what_a_stopped_loop_left_uncommitted_is_saved_before_the_branch_is_restored(repo):
    code, out = run_loop(repo, None, max_experiments=1)
    assert code == 0, out
    (repo / "train.py").write_text(STANDIN_TRAIN.replace("DEPTH = 4 ", "DEPTH = 7 "))  # a proposal cut short
    (repo / "notes.txt").write_text("half a thought\n")
    code, out = run_loop(repo, None, max_experiments=1)
    assert code == 0, out
    ref = re.search(r"saved as (refs/autoresearch/t/leftover-\S+)", out).group(1)
    assert "DEPTH = 7" in git(repo, "show", f"{ref}:train.py")
    assert git(repo, "show", f"{ref}:notes.txt") == "half a thought"
    assert git(repo, "rev-parse", f"{ref}^") == rows(repo)[0]["commit_sha"]
    assert git(repo, "status", "--porcelain") == "" and not (repo / "notes.txt").exists()
