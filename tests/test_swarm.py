"""
`autoresearch swarm`: one campaign, several experiments in flight, the local backend.

A stand-in train.py prints its summary (its val_bpb a function of its knobs) after sleeping SLEEP
seconds, or hangs from its Nth run on, so the tests can order the workers' results and stop them.
The Ray backend has its own tests (test_swarm_ray.py).
"""

import io
import os
import signal
import statistics
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from autoresearch import loop, sandbox, swarm
from autoresearch.ledger import Ledger, was_interrupted
from conftest import alive, git
from standins.scripted import Scripted
from standins.summary import SUMMARY

ROOT = Path(__file__).resolve().parents[1]

# the knobs sit apart (a merge of two changes to different knobs is clean)
STANDIN_TRAIN = textwrap.dedent("""\
    import os, time
    MATRIX_LR = 0.04          # Muon

    # model
    DEPTH = 4                 # layers

    # how long it takes, and how long it says it trained
    SLEEP = 0.0
    TRAINED = 1.0
    counter = os.environ.get("STANDIN_COUNTER")
    if counter:
        with open(counter, "a") as f:
            f.write(f"{os.getpid()}\\n")
        runs = len(open(counter).read().split())
        if int(os.environ["STANDIN_HANG_FROM"]) <= runs <= int(os.environ.get("STANDIN_HANG_UNTIL", "999")):
            print("step 00001 (1.0%) | loss: 9.000000", flush=True)
            time.sleep(600)
    time.sleep(SLEEP)
    seed = int(os.environ.get("AUTORESEARCH_SEED", "42"))
    val = 1.0 + (MATRIX_LR - 0.05) ** 2 * 100 + 0.01 * abs(DEPTH - 5) + 0.001 * (seed - 42)
    print(f"threads {os.environ.get('OMP_NUM_THREADS')}")
    """) + SUMMARY


@pytest.fixture
def repo(campaign_repo, printed_metric):
    (campaign_repo / "train.py").write_text(STANDIN_TRAIN)
    git(campaign_repo, "commit", "-qam", "stand-in train.py")
    return campaign_repo


def rows(repo, tag="t"):
    return Ledger(repo=repo).experiments(tag=tag)


def run_swarm(repo, script, workers=2, **options):
    options.setdefault("baseline_repeats", 1)
    out = io.StringIO()
    code = swarm.Swarm(str(repo), "t", "search", workers=workers, proposer=Scripted(script), out=out,
                       backoff=0.01, **options).main()
    return code, out.getvalue()


def cli(repo, *args, env=None, **kw):
    return subprocess.run([sys.executable, "-m", "autoresearch.cli", "swarm", *args], cwd=repo,
                          capture_output=True, text=True, env={**os.environ, **(env or {})}, **kw)


def start(repo, *args, env=None):
    """The swarm in a process group of its own (what it leaves behind when killed can be cleaned up)."""
    return subprocess.Popen([sys.executable, "-m", "autoresearch.cli", "swarm", *args], cwd=repo,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})},
                            start_new_session=True)


def clean_up_group(proc):
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def hang_env(tmp_path, from_run, until_run=999):
    """The stand-in's runs from_run..until_run (counted in tmp_path/runs, one pid a line) hang."""
    return {"STANDIN_COUNTER": str(tmp_path / "runs"), "STANDIN_HANG_FROM": str(from_run),
            "STANDIN_HANG_UNTIL": str(until_run),
            "AUTORESEARCH_PASS_ENV": "STANDIN_COUNTER,STANDIN_HANG_FROM,STANDIN_HANG_UNTIL"}


def wait_for(condition, seconds=90, proc=None):
    deadline = time.time() + seconds
    while time.time() < deadline:
        if condition():
            return
        assert proc is None or proc.poll() is None, proc.communicate()
        time.sleep(0.2)
    raise AssertionError("timed out waiting")


def assert_consistent(repo, tag="t"):
    """Tree clean on the branch's last keep, nothing left running, results.tsv row for row."""
    experiments = rows(repo, tag)
    assert git(repo, "status", "--porcelain") == ""
    keeps = [r for r in experiments if r["status"] == "keep"]
    assert git(repo, "rev-parse", "HEAD") == keeps[-1]["commit_sha"]
    assert git(repo, "rev-parse", "--abbrev-ref", "HEAD") == f"autoresearch/{tag}"
    assert not [r for r in experiments if r["status"] == "running"]
    tsv = (repo / "results.tsv").read_text().splitlines()[1:]
    counted = [r for r in experiments if not was_interrupted(r)]  # a run a stop cut short is no result
    assert [line.split("\t")[0] for line in tsv] == [r["commit_sha"][:7] for r in counted]
    return experiments


# ------------------------------------------------------------------------------------------ workers

def test_cpu_workers_split_the_cores_and_the_memory_equally():
    if sandbox.gpu_count():
        pytest.skip("a GPU machine places one worker per GPU")
    slots = swarm.placements(2)
    share = str(max(1, (os.cpu_count() or 1) // 2))
    assert slots == [{"OMP_NUM_THREADS": share, "MKL_NUM_THREADS": share, "memory_share": 0.5}] * 2


def test_devices_on_a_machine_without_gpus_is_a_one_line_error(repo):
    if sandbox.gpu_count():
        pytest.skip("this machine has GPUs")
    proc = cli(repo, "--tag", "t", "--workers", "2", "--devices", "0,1")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "error: --devices names GPUs, and this machine has none; use --workers alone on a CPU"]


def test_a_ray_address_without_the_ray_backend_is_a_one_line_error(repo):
    proc = cli(repo, "--tag", "t", "--ray-address", "auto")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == ["error: --ray-address joins a Ray cluster: pass --backend ray with it"]


def test_two_workers_run_two_experiments_at_once_each_on_its_share_of_the_cores(repo):
    code, out = run_swarm(repo, [("slow a", {"SLEEP": 3.0}), ("slow b", {"SLEEP": 3.0, "DEPTH": 5})],
                          max_experiments=3)
    assert code == 0
    experiments = assert_consistent(repo)
    a, b = experiments[1], experiments[2]
    assert a["started_at"] < b["ended_at"] and b["started_at"] < a["ended_at"]  # in flight together
    assert {a["worker"], b["worker"]} == {"w1", "w2"}
    share = max(1, (os.cpu_count() or 1) // 2)
    assert all(f"threads {share}" in Path(r["log_path"]).read_text() for r in experiments)


def test_a_starved_baseline_repeat_is_run_again_and_is_no_noise_sample(repo, tmp_path, monkeypatch):
    monkeypatch.setenv("STANDIN_CPU_SHARE", "0,0.9,0,0")
    monkeypatch.setenv("STANDIN_CPU_SHARE_RUNS", str(tmp_path / "runs"))
    run_swarm(repo, [("gain", {"MATRIX_LR": 0.05})], workers=1, baseline_repeats=3, max_experiments=4)
    experiments = assert_consistent(repo)
    assert [(r["status"], r["starved"], r["is_baseline"]) for r in experiments] == [
        ("keep", 0, 1), ("discard", 1, 1), ("discard", 0, 1), ("discard", 0, 1)]
    assert experiments[1]["cause"].startswith("starved: ")
    assert Ledger(repo=repo).campaign("t")["noise_std"] == pytest.approx(
        statistics.stdev([experiments[i]["val_bpb"] for i in (0, 2, 3)]))


def test_a_would_be_keep_that_trained_past_its_budget_while_starved_is_run_again_and_never_kept(
        repo, tmp_path, monkeypatch):
    monkeypatch.setenv("STANDIN_CPU_SHARE", "0,0.6")
    monkeypatch.setenv("STANDIN_CPU_SHARE_RUNS", str(tmp_path / "runs"))
    run_swarm(repo, [("gain, trained 40 s", {"MATRIX_LR": 0.05, "TRAINED": 40.0})], workers=1, max_experiments=4)
    experiments = assert_consistent(repo)
    assert [(r["status"], r["starved"]) for r in experiments] == [("keep", 0)] + [("discard", 1)] * 3
    assert [r["retry_of"] for r in experiments[2:]] == [experiments[1]["id"], experiments[2]["id"]]
    assert experiments[-1]["cause"].startswith("starved past its budget: trained 40 s by its own count")


def test_every_experiment_starts_from_the_best_at_its_dispatch(repo):
    run_swarm(repo, [("gain", {"MATRIX_LR": 0.05}), ("after it", {"SLEEP": 0.1}), ("and more", {"DEPTH": 5})],
              workers=1, max_experiments=4)
    experiments = assert_consistent(repo)
    assert experiments[2]["parent_commit"] == experiments[1]["commit_sha"]
    assert "MATRIX_LR = 0.05" in git(repo, "show", f"{experiments[3]['commit_sha']}:train.py")


def test_only_the_baselines_compile_cache_reaches_the_runs_after_it(repo):
    """Each run logs what its compile cache held at start and leaves its MATRIX_LR there; kept or not,
    a change an agent wrote adopts nothing (compilecache.py)."""
    probe = ('import os as _os\n_mark = _os.path.join(_os.environ["TORCHINDUCTOR_CACHE_DIR"], "marker")\n'
             'print("CACHE AT START " + (open(_mark).read() if _os.path.exists(_mark) else "nothing"))\n')
    (repo / "train.py").write_text(probe + STANDIN_TRAIN + 'open(_mark, "w").write(f"lr={MATRIX_LR}")\n')
    git(repo, "commit", "-qam", "a stand-in that uses its compile cache")
    run_swarm(repo, [("gain", {"MATRIX_LR": 0.05}), ("loss", {"MATRIX_LR": 0.09}), ("after", {"DEPTH": 5})],
              workers=1, max_experiments=4)
    experiments = assert_consistent(repo)
    assert [r["status"] for r in experiments] == ["keep", "keep", "discard", "keep"]
    seen = [Path(r["log_path"]).read_text().split("CACHE AT START ", 1)[1].split("\n", 1)[0] for r in experiments]
    assert seen == ["nothing", "lr=0.04", "lr=0.04", "lr=0.04"]
    events = [e["message"] for e in Ledger(repo=repo).events(tag="t") if e["kind"] == "compile-cache"]
    assert [m.split(":")[0] for m in events] == [f"#{experiments[0]['id']}"]


# ------------------------------------------------------------------------------------- the keep rule

def test_a_result_that_beat_its_start_after_another_keep_landed_is_run_again_on_the_new_best(repo):
    script = [("lr", {"MATRIX_LR": 0.05}), ("depth", {"DEPTH": 5, "SLEEP": 4.0}), ("other", {"SLEEP": 0.1})]
    code, out = run_swarm(repo, script, max_experiments=5)
    experiments = assert_consistent(repo)
    by = {r["description"]: r for r in experiments}
    assert by["lr"]["status"] == "keep"
    assert by["depth"]["status"] == "discard"
    assert by["depth"]["cause"] == f"beat its start (1.020000) but #{by['lr']['id']} was kept meanwhile: re-run on it"
    merged = by[f"depth [re-run of #{by['depth']['id']}]"]
    assert merged["retry_of"] == by["depth"]["id"] and merged["parent_commit"] == by["lr"]["commit_sha"]
    assert merged["status"] == "keep" and merged["val_bpb"] == pytest.approx(1.0)
    train = (repo / "train.py").read_text()
    assert "MATRIX_LR = 0.05" in train and "DEPTH = 5" in train


def test_a_screening_run_gets_its_share_of_the_budget_and_is_never_kept(repo):
    script = [("screen it", {"MATRIX_LR": 0.05}, {"fidelity": 0.5}), ("repeat it", {"DEPTH": 5}, {"repeat": True})]
    run_swarm(repo, script, workers=1, max_experiments=3)
    experiments = assert_consistent(repo)
    screened, repeated = experiments[1], experiments[2]
    assert screened["status"] == "screened" and screened["time_budget"] == 7.5  # smoke: 15 s
    assert repeated["seed"] == 43 and repeated["time_budget"] == 15 and repeated["status"] == "keep"
    assert screened["val_bpb"] < repeated["val_bpb"] == Ledger(repo=repo).best("t")  # lower, yet never the best


def test_a_screening_run_is_held_to_its_own_share_of_the_budget(repo):
    """A screening run of 7.5 s that says it trained 14 s is past its budget, not within the profile's 15 s."""
    run_swarm(repo, [("screen it", {"TRAINED": 14.0}, {"fidelity": 0.5})], workers=1, max_experiments=2)
    screened = assert_consistent(repo)[1]
    assert screened["time_budget"] == 7.5 and screened["status"] == "invalid"
    assert screened["cause"] == "trained 14 s by its own count: past the budget of 7.5 s"


def test_a_change_that_does_not_merge_onto_the_new_best_is_discarded_with_the_reason(repo):
    script = [("lr", {"MATRIX_LR": 0.05}), ("lr too", {"MATRIX_LR": 0.045, "SLEEP": 4.0}), ("other", {"SLEEP": 8.0}),
              ("more", {"SLEEP": 0.2})]
    run_swarm(repo, script, max_experiments=5)
    experiments = assert_consistent(repo)
    by = {r["description"]: r for r in experiments}
    assert by["lr too"]["status"] == "discard"
    assert by["lr too"]["cause"] == (f"beat its start (1.020000) but #{by['lr']['id']} was kept meanwhile: re-run on "
                                     f"it (not re-run: its change does not merge onto the best)")
    assert not [r for r in experiments if r.get("retry_of")]


# ------------------------------------------------------------------------------------ stop and resume

def test_an_interrupted_result_runs_again_on_the_best_that_moved_meanwhile(repo, tmp_path, monkeypatch):
    for name, value in hang_env(tmp_path, 3, 4).items():  # the 3rd and 4th runs hang until the stop
        monkeypatch.setenv(name, value)
    script = [("lr", {"MATRIX_LR": 0.05}), ("depth", {"DEPTH": 5, "SLEEP": 2.0}), ("other", {"SLEEP": 0.1})]
    def interrupt_when_both_hang():
        wait_for(lambda: len((tmp_path / "runs").read_text().split()) == 4 if (tmp_path / "runs").exists() else False)
        os.kill(os.getpid(), signal.SIGINT)

    stop = threading.Thread(target=interrupt_when_both_hang, daemon=True)
    stop.start()
    with pytest.raises(loop.Stop):
        run_swarm(repo, script, max_experiments=6)
    by = {r["description"]: r for r in rows(repo)}
    assert by["lr"]["status"] == "keep" and by["depth"]["cause"] == "interrupted (SIGINT)"
    assert by["depth"]["parent_commit"] != by["lr"]["commit_sha"]  # it started before lr was kept

    run_swarm(repo, [("more", {"SLEEP": 0.1})], max_experiments=5)
    experiments = assert_consistent(repo)
    again = [r for r in experiments if r.get("retry_of") == by["depth"]["id"]]
    assert len(again) == 1 and again[0]["parent_commit"] == by["lr"]["commit_sha"]
    text = git(repo, "show", f"{again[0]['commit_sha']}:train.py")
    assert "MATRIX_LR = 0.05" in text and "DEPTH = 5" in text  # lr's kept change is not undone



def test_ctrl_c_stops_every_worker_and_the_same_command_runs_them_again(repo, tmp_path):
    args = ["--tag", "t", "--workers", "2", "--max-experiments", "4", "--baseline-repeats", "1"]
    first = start(repo, *args, env=hang_env(tmp_path, 2))
    wait_for(lambda: sum(r["status"] == "running" for r in rows(repo)) == 2 and
             len((tmp_path / "runs").read_text().split()) == 3, proc=first)
    pids = [int(p) for p in (tmp_path / "runs").read_text().split()[1:]]
    first.send_signal(signal.SIGINT)
    out, err = first.communicate(timeout=60)
    assert first.returncode == 130, err
    cut = rows(repo)[1:]
    assert [(r["status"], r["cause"]) for r in cut] == [("crash", "interrupted (SIGINT)")] * 2
    assert not any(alive(pid) for pid in pids)

    again = cli(repo, *args, timeout=300)
    assert again.returncode == 0, again.stderr
    experiments = assert_consistent(repo)
    retried = [r["retry_of"] for r in experiments if r.get("retry_of")]
    assert sorted(retried) == sorted(r["id"] for r in cut)  # each once
    assert len([r for r in experiments if not r["cause"] or not r["cause"].startswith("interrupted")]) == 4


def test_a_killed_swarm_is_recovered_and_its_experiments_run_again(repo, tmp_path):
    args = ["--tag", "t", "--workers", "2", "--max-experiments", "4", "--baseline-repeats", "1"]
    first = start(repo, *args, env=hang_env(tmp_path, 2))
    wait_for(lambda: sum(r["status"] == "running" for r in rows(repo)) == 2 and
             len((tmp_path / "runs").read_text().split()) == 3, proc=first)
    pids = [int(p) for p in (tmp_path / "runs").read_text().split()[1:]]
    first.kill()  # kill -9: no handler runs; the trainings live on in their own process groups
    first.wait()
    assert all(alive(pid) for pid in pids)

    again = cli(repo, *args, timeout=300)
    assert again.returncode == 0, again.stderr
    assert not any(alive(pid) for pid in pids)  # stopped by the recovery
    experiments = assert_consistent(repo)
    cut = [r for r in experiments if r["cause"] and r["cause"].startswith("interrupted")]
    assert len(cut) == 2 and sorted(r["retry_of"] for r in experiments if r.get("retry_of")) == [r["id"] for r in cut]
