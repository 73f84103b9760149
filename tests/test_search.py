"""
The `search` proposer's model: the search space read from train.py, the Optuna study rebuilt from the
ledger at every proposal (so a killed loop proposes what it would have), samplers, determinism, and
multi-fidelity screening (short runs recorded as `screened`, never kept, the best of them promoted).
"""

import signal
import os

import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from autoresearch import loop as loop_module
from autoresearch import sandbox
from autoresearch.ledger import Ledger
from autoresearch.proposers import ProposerConfigError, get_proposer, search, space
from test_loop import STANDIN_TRAIN, cli, git, hang_env, repo, rows, run_loop, start, wait_for_running  # noqa: F401
from test_proposers import ROOT, TRAIN_PY, changed_lines

BUDGET = 15.0


class Campaign:
    """A git repo with the real train.py and a ledger-like history of rows, each with its commit made,
    as the loop makes it, on the campaign's best (the newest kept row's commit): its parent_commit."""

    def __init__(self, path):
        from conftest import make_repo
        self.repo = make_repo(path, files=("train.py",))
        self.history = []
        self.best = None

    def row(self, train_py, status, val=None, is_baseline=False, time_budget=BUDGET, **cols):
        if self.best:
            git(self.repo, "checkout", "-q", "--detach", self.best)
        parent = git(self.repo, "rev-parse", "HEAD")
        (self.repo / "train.py").write_text(train_py)
        git(self.repo, "commit", "-qam", f"row {len(self.history) + 1}", "--allow-empty")
        row = dict(id=len(self.history) + 1, commit_sha=git(self.repo, "rev-parse", "HEAD"), parent_commit=parent,
                   status=status, val_bpb=val, is_baseline=int(is_baseline), time_budget=time_budget, device="cpu",
                   **cols)
        self.history.append(row)
        if status == "keep":
            self.best = row["commit_sha"]
        return row

    def knobs(self, changes, source=TRAIN_PY):
        return search.apply_changes(source, search.find_knobs(source, "cpu"), changes)

    def propose(self, train_py=TRAIN_PY, **options):
        options.setdefault("device", "cpu")
        return get_proposer("search", repo=self.repo, **options).propose(train_py, "", self.history, None)


@pytest.fixture
def campaign(tmp_path):
    return Campaign(tmp_path / "c")


def measured(campaign, n=search.STARTUP):
    """A baseline and n measured one-knob steps (the start of a campaign)."""
    campaign.row(TRAIN_PY, "keep", 1.60, is_baseline=True)
    for i, lr in enumerate([0.02, 0.03, 0.05, 0.06, 0.08, 0.1][:n]):
        campaign.row(campaign.knobs({"MATRIX_LR": lr}), "discard", 1.60 + abs(lr - 0.03))


def values(train_py):
    return {name: k.value for name, k in search.find_knobs(train_py, "cpu").items()}


# ------------------------------------------------------------------------------------------- space

def test_space_is_typed_by_each_knobs_kind_around_its_value():
    knobs = search.find_knobs(TRAIN_PY, "cpu")
    s = space.build(values(TRAIN_PY), {n: k.kind for n, k in knobs.items()}, {})
    assert s["MATRIX_LR"] == FloatDistribution(0.01, 0.16, log=True)  # 0.04: a learning rate, log scale
    assert s["DEPTH"] == IntDistribution(2, 8)
    assert s["TOTAL_BATCH_SIZE"] == CategoricalDistribution((1024, 2048, 4096, 8192, 16384))  # 2**12
    assert s["DEVICE_BATCH_SIZE"] == CategoricalDistribution((1, 2, 4, 8, 16))
    assert set(s["WINDOW_PATTERN"].choices) >= {"L", "SSSL"}
    assert s["WARMDOWN_RATIO"] == FloatDistribution(0.0, 1.0) and s["FINAL_LR_FRAC"] == FloatDistribution(0.0, 0.3)
    assert "SEED" not in s and "DEVICE_TYPE" not in s


def test_space_follows_an_edit_of_the_knob_block(campaign):
    campaign.row(TRAIN_PY, "keep", 1.6, is_baseline=True)
    edited = TRAIN_PY.replace("\nDEPTH = ", "\nDROPOUT_PROB = 0.1  # added by an agent\nDEPTH = ", 1)
    knobs = search.find_knobs(edited, "cpu")
    proposer = get_proposer("search", repo=campaign.repo, device="cpu")
    s = proposer.space(campaign.history, edited, knobs, "cpu", proposer.observations(campaign.history, "cpu"))
    assert s["DROPOUT_PROB"] == FloatDistribution(0.0, 0.3)
    assert s["MATRIX_LR"] == FloatDistribution(0.01, 0.16, log=True)  # still centred on the base train.py


def test_space_is_centred_on_the_campaigns_base_not_the_moving_best(campaign):
    measured(campaign)
    best = campaign.knobs({"MATRIX_LR": 0.08})
    knobs = search.find_knobs(best, "cpu")
    proposer = get_proposer("search", repo=campaign.repo, device="cpu")
    s = proposer.space(campaign.history, best, knobs, "cpu", proposer.observations(campaign.history, "cpu"))
    assert s["MATRIX_LR"] == FloatDistribution(0.01, 0.16, log=True)


def test_a_value_the_campaign_ran_outside_its_range_widens_it():
    s = space.build({"LR": 0.04, "N": 4}, {"LR": "float", "N": "int"}, {"LR": [0.5], "N": [3, 40]})
    assert s["LR"] == FloatDistribution(0.01, 0.5, log=True) and s["N"] == IntDistribution(2, 40)


# ------------------------------------------------------------------------------------------- model

def test_the_model_varies_one_to_three_knobs_around_the_best_once_the_campaign_has_a_few_results(campaign):
    measured(campaign, search.STARTUP - 1)
    assert len(changed_lines(TRAIN_PY, campaign.propose().train_py)) <= 2  # the start: local steps
    campaign.row(campaign.knobs({"DEPTH": 5}), "discard", 1.62)
    for sampler in ("tpe", "cmaes"):
        for seed in range(5):
            proposal = campaign.propose(sampler=sampler, seed=seed)
            changed = {n for n, v in values(proposal.train_py).items() if v != values(TRAIN_PY)[n]}
            assert 1 <= len(changed) <= max(search.SUBSPACE), (sampler, changed)
            assert proposal.fidelity == 1.0
    assert len(changed_lines(TRAIN_PY, campaign.propose(sampler="random").train_py)) <= 2


@pytest.mark.parametrize("sampler", ["tpe", "cmaes", "random"])
def test_proposals_are_deterministic_for_a_seed(campaign, sampler):
    measured(campaign)
    a, b = (campaign.propose(sampler=sampler, seed=5) for _ in range(2))
    assert a == b
    others = {campaign.propose(sampler=sampler, seed=s).train_py for s in range(6, 10)}
    assert len(others) > 1


def test_crashes_are_results_and_interrupted_or_starved_runs_are_not(campaign):
    measured(campaign)
    crashed = campaign.row(campaign.knobs({"DEPTH": 8}), "crash", cause="OOM")
    cut = campaign.row(campaign.knobs({"DEPTH": 7}), "crash", cause="interrupted (SIGKILL)")
    starved = campaign.row(campaign.knobs({"DEPTH": 6}), "discard", 1.5, cause="starved: ...; re-run")
    busy = campaign.row(campaign.knobs({"DEPTH": 5}), "discard", 2.9, starved=1)  # a discard the loop let stand
    running = campaign.row(campaign.knobs({"DEPTH": 3}), "running")
    proposer = get_proposer("search", repo=campaign.repo, device="cpu")
    obs = {o.rows[0]["id"]: o for o in proposer.observations(campaign.history, "cpu").values()}
    assert obs[crashed["id"]].failed["full"] == 1 and obs[crashed["id"]].measured("full")
    assert not obs[cut["id"]].measured("full") and not obs[starved["id"]].measured("full")
    assert not obs[busy["id"]].measured("full")
    assert obs[running["id"]].pending["full"] == 1
    # none of them is proposed again
    tried = {search.fingerprint(o.values) for o in obs.values()}
    for seed in range(5):
        assert search.fingerprint(values(campaign.propose(seed=seed).train_py)) not in tried


def test_a_study_rebuilt_from_the_ledger_after_kill_9_proposes_what_the_killed_loop_did(repo, tmp_path):
    """The killed loop's proposal in flight (the model's, past the start) is the one a fresh proposer
    makes from the ledger's rows before it: there is no state but the ledger."""
    at = search.STARTUP + 3  # the baseline, the local steps, then the model's proposals
    first = start(repo, "--tag", "t", "--max-experiments", "30", env=hang_env(tmp_path, at))
    train_pid = wait_for_running(repo, tmp_path, first)
    first.kill()  # kill -9
    first.wait()
    os.killpg(train_pid, signal.SIGKILL)
    history = rows(repo)
    running = history[-1]
    assert running["status"] == "running" and len(history) == at
    best = [r for r in history[:-1] if r["status"] == "keep"][-1]
    train_py = git(repo, "show", f"{best['commit_sha']}:train.py") + "\n"
    proposal = get_proposer("search", repo=repo, seed=0).propose(train_py, "", history[:-1], None)
    assert proposal.train_py == git(repo, "show", f"{running['commit_sha']}:train.py") + "\n"
    assert proposal.description == running["description"]


def test_a_near_miss_is_measured_again_on_a_new_seed_once(campaign):
    """A result that beat the best by less than the noise threshold is where the model is least sure:
    it is run once more (a new seed), and the model then uses the mean of the two."""
    measured(campaign)  # the best: the baseline, 1.60
    near = campaign.row(campaign.knobs({"DEPTH": 5}), "discard", 1.595, threshold=0.01)
    again = campaign.propose()
    assert again.repeat and values(again.train_py)["DEPTH"] == 5
    assert again.description.startswith(f"re-measure #{near['id']} on a new seed: DEPTH 4 -> 5")
    campaign.row(again.train_py, "discard", 1.605, threshold=0.01)
    following = campaign.propose()
    assert not following.repeat and values(following.train_py) != values(again.train_py)
    proposer = get_proposer("search", repo=campaign.repo, device="cpu")
    [obs] = [o for o in proposer.observations(campaign.history, "cpu").values() if o.rows[0]["id"] == near["id"]]
    assert obs.value("full", None) == pytest.approx(1.60)


def test_a_near_miss_is_one_that_beat_the_mean_of_the_baseline_runs_by_less_than_the_threshold(campaign):
    baseline = campaign.row(TRAIN_PY, "keep", 1.64, is_baseline=True)  # its first run drew high
    for val in (1.58, 1.60):  # its noise repeats, same commit: the reference is their mean, 1.6067
        campaign.history.append(dict(baseline, id=len(campaign.history) + 1, status="discard", val_bpb=val))
    for lr in (0.02, 0.05, 0.06, 0.08):
        campaign.row(campaign.knobs({"MATRIX_LR": lr}), "discard", 1.62 + abs(lr - 0.03), threshold=0.04)
    campaign.row(campaign.knobs({"DEPTH": 3}), "discard", 1.615, threshold=0.04)  # beat the first run only
    near = campaign.row(campaign.knobs({"DEPTH": 5}), "discard", 1.59, threshold=0.04)
    again = campaign.propose()
    assert again.repeat and again.description.startswith(f"re-measure #{near['id']} on a new seed")


def test_the_loop_runs_a_repeat_on_a_new_seed(repo):
    from standins.scripted import Scripted

    class Again(Scripted):
        def propose(self, *args):
            proposal = super().propose(*args)
            proposal.repeat = True
            return proposal

    code, out = run_loop(repo, Again([("DEPTH 4 -> 5", {"DEPTH": 5})]), max_experiments=2)
    assert code == 0, out
    assert [r["seed"] for r in rows(repo)] == [42, 43]


# --------------------------------------------------------------------------------------- screening

def test_screening_runs_candidates_short_and_promotes_the_best_of_each_three(campaign):
    measured(campaign)
    first = campaign.propose(screen=0.3)
    assert first.fidelity == 0.3 and first.description.startswith("screen 30%: ")
    screened = [campaign.row(campaign.knobs({"DEPTH": d}), "screened", v, time_budget=0.3 * BUDGET)
                for d, v in ((5, 1.70), (6, 1.65), (3, 1.72))]
    promoted = campaign.propose(screen=0.3)
    assert promoted.fidelity == 1.0 and promoted.description.startswith(f"full run of screened #{screened[1]['id']}")
    assert values(promoted.train_py)["DEPTH"] == 6
    campaign.row(promoted.train_py, "discard", 1.61)
    assert campaign.propose(screen=0.3).fidelity == 0.3  # the next rung starts


def test_candidates_screened_on_an_earlier_best_never_earn_a_full_run_after_a_keep(campaign):
    measured(campaign)
    for d, v in ((5, 1.70), (6, 1.65), (3, 1.72), (2, 1.75)):
        campaign.row(campaign.knobs({"DEPTH": d}), "screened", v, time_budget=0.3 * BUDGET)
    old = campaign.row(campaign.knobs({"MATRIX_LR": 0.045}), "screened", 1.66, time_budget=0.3 * BUDGET)
    best = campaign.knobs({"DEPTH": 6})
    campaign.row(best, "keep", 1.55)  # the promoted DEPTH 6 is kept
    campaign.row(campaign.knobs({"HEAD_DIM": 32}, best), "screened", 1.69, time_budget=0.3 * BUDGET)
    proposal = campaign.propose(best, screen=0.3)
    # five screened on the old best, one on the new: the old rule promoted MATRIX_LR 0.045 (DEPTH back at 4)
    assert proposal.fidelity == 0.3, f"#{old['id']} was promoted: {proposal.description}"


def test_a_candidate_whose_full_run_was_invalid_is_not_promoted_again(campaign):
    measured(campaign)
    for d, v in ((5, 1.70), (6, 1.65), (3, 1.72)):
        campaign.row(campaign.knobs({"DEPTH": d}), "screened", v, time_budget=0.3 * BUDGET)
    campaign.row(campaign.knobs({"DEPTH": 6}), "invalid", cause="wrote 17 GiB to the host's disk")
    assert campaign.propose(screen=0.3).fidelity == 0.3


def test_after_a_keep_the_best_of_three_candidates_screened_on_it_earns_a_full_run(campaign):
    measured(campaign)
    for d, v in ((5, 1.62), (6, 1.60), (3, 1.63)):
        campaign.row(campaign.knobs({"DEPTH": d}), "screened", v, time_budget=0.3 * BUDGET)
    best = campaign.knobs({"DEPTH": 6})
    campaign.row(best, "keep", 1.55)
    here = [campaign.row(campaign.knobs({"HEAD_DIM": h}, best), "screened", v, time_budget=0.3 * BUDGET)
            for h, v in ((32, 1.69), (128, 1.67), (16, 1.68))]
    # ranked among themselves: the earlier best's screened results (better, on another base) do not count
    promoted = campaign.propose(best, screen=0.3)
    assert promoted.fidelity == 1.0 and promoted.description.startswith(f"full run of screened #{here[1]['id']}")
    assert values(promoted.train_py)["DEPTH"] == 6


def test_a_screening_run_in_flight_or_crashed_counts_as_screened_not_full(campaign):
    measured(campaign)
    running = campaign.row(campaign.knobs({"DEPTH": 5}), "running", time_budget=0.3 * BUDGET)
    crashed = campaign.row(campaign.knobs({"DEPTH": 6}), "crash", time_budget=0.3 * BUDGET, cause="OOM")
    obs = get_proposer("search", repo=campaign.repo, device="cpu").observations(campaign.history, "cpu")
    by_id = {o.rows[0]["id"]: o for o in obs.values()}
    assert by_id[running["id"]].pending == {"full": 0, "screened": 1}
    assert by_id[crashed["id"]].failed == {"full": 0, "screened": 1}


def test_screened_runs_are_short_never_kept_and_never_the_best(repo):
    proposer = get_proposer("search", repo=str(repo), seed=1, screen=0.5)
    code, out = run_loop(repo, proposer, max_experiments=12)
    assert code == 0, out
    experiments = rows(repo)
    baseline = experiments[0]
    screened = [r for r in experiments if r["status"] == "screened"]
    assert len(screened) >= 3 and all(r["time_budget"] == 0.5 * baseline["time_budget"] for r in screened)
    assert all(r["val_bpb"] is not None for r in screened)
    full = [r for r in experiments[1:] if r["status"] != "screened"]
    assert full and all(r["description"].startswith("full run of screened") for r in full)
    keeps = [r for r in experiments if r["status"] == "keep"]
    assert Ledger(repo=repo).best("t") == min(r["val_bpb"] for r in keeps)
    tsv = (repo / "results.tsv").read_text().splitlines()[1:]
    assert sum(line.endswith("[screened]") and "\tdiscard\t" in line for line in tsv) == len(screened)


def test_a_screening_run_gets_its_budget_in_the_environment():
    spec = sandbox.Spec(train_py="", base_commit="x", profile="smoke", time_budget=4.5)
    assert sandbox.environment(spec, "/c", 3, "/h")["AUTORESEARCH_TIME_BUDGET"] == "4.5"
    assert "AUTORESEARCH_TIME_BUDGET" not in sandbox.environment(sandbox.Spec("", "x", "smoke"), "/c", 3, "/h")


# ------------------------------------------------------------------------------------------ options

def test_search_and_screen_options_choose_the_sampler_and_the_fraction(tmp_path):
    loop = loop_module.Loop(str(tmp_path), "t", "search", search="cmaes", screen=0.25)
    assert loop.proposer_options["sampler"] == "cmaes" and loop.proposer_options["screen"] == 0.25
    assert get_proposer("search", **loop.proposer_options).sampler == "cmaes"
    with pytest.raises(ProposerConfigError, match="unknown search sampler"):
        get_proposer("search", sampler="grid")


@pytest.mark.parametrize("flags, error", [(["--search", "grid"], "invalid choice"),
                                          (["--screen", "1.5"], "--screen")])
def test_bad_search_flags_are_usage_errors(repo, flags, error):
    proc = cli(repo, "--tag", "t", *flags)
    assert proc.returncode == 2 and error in proc.stderr


def test_a_screening_run_trains_for_its_share_of_the_budget_in_the_sandbox(campaign_repo, short_budget):
    """The real train.py and the real (trusted) executor: the shorter budget reaches the training, and
    the harness times it against that budget."""
    from autoresearch import runner
    git(campaign_repo, "checkout", "-qb", "autoresearch/s")
    row = runner.run_experiment(str(campaign_repo), "screen 50%: baseline", time_budget=short_budget / 2)
    assert row["time_budget"] == short_budget / 2
    assert f"budget: {short_budget / 2:g}s of training (overridden: not comparable)" in open(row["log_path"]).read()
    # judged against its own budget (a machine so busy that one step outlasts the grace is invalid)
    assert row["status"] in ("keep", "invalid"), (row["cause"], row["log_tail"])


def test_the_loop_names_the_sampler_and_the_screening_it_runs(repo):
    code, out = run_loop(repo, get_proposer("search", repo=str(repo), sampler="cmaes", screen=0.3), max_experiments=1)
    assert code == 0 and "proposer search (cmaes, screening on 30% of the budget)" in out
