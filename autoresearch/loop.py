"""
The never-stopping loop: `autoresearch loop --proposer NAME --tag T [budgets] [noise options]`.

The harness owns the research loop. In the current checkout:
  1. Create the branch autoresearch/<tag> from HEAD, or resume it. A row a dead loop left `running`
     is recorded as crash (cause "interrupted") by the runner's recovery, and the branch and tree are
     restored to the campaign's best (anything else lying there is saved under
     refs/autoresearch/<tag>/leftover-<time> first): nothing is lost, nothing runs twice.
  2. The baseline, if the campaign has none: train.py unchanged, recorded as keep. It runs
     --baseline-repeats K times (default 3) on seeds 42, 43, ...; the standard deviation of the K
     val_bpbs is the campaign's noise, and the keep threshold is max(--min-delta, 2 x noise); a
     change must beat the mean of the K runs by the threshold (Ledger.reference), not the first.
     K = 1 skips the measurement (status and the report then say "noise not measured").
  3. Then until a budget is spent: the proposer gets the best train.py, program.md, the history and
     the last failure's log tail and returns a new train.py; the runner commits it, trains, decides
     and records. With --confirm a would-be keep is re-run on a new seed and kept only if both runs
     beat the best. A would-be keep from a starved run (other processes took a large share of the
     machine while it trained, see contention.py) is re-run before it counts. A proposal that
     cannot be used is recorded as an `invalid` experiment; a proposer that fails (network, rate
     limit) is retried with exponential back-off, its URL in the message.
Before anything runs, the loop checks that the checkout's profile and prepared data are the
campaign's and that the proposer can be reached: either failing is one line and exit 2.
Budgets count the whole campaign (a resumed loop finishes the same budget): --max-experiments
counts every finished experiment of the tag, baseline, repeats, confirmations and re-runs included;
--max-cost sums the LLM cost of all of them; --hours is this invocation's wall-clock time (no new
experiment starts after it; the one running finishes). Ctrl-C or SIGTERM stops cleanly: the training
is killed and recorded (as crash, cause "interrupted"), the tree is reset, exit 130 or 143; an
experiment a stop interrupted is not spent: the resumed loop runs it again first.
"""

import os
import platform
import re
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time

from autoresearch import cli, contention, gitutil, ledger, results, runner, sandbox
from autoresearch.ledger import Ledger
from autoresearch.proposers import REGISTRY, Proposal, ProposalError, ProposerConfigError, get_proposer

DEFAULT_SEED = 42          # train.py's default AUTORESEARCH_SEED
MAX_BACKOFF = 300.0        # seconds between proposer retries at most
BASELINE_CRASH_LIMIT = 3   # a baseline that crashes this often in a row stops the loop
CONFIG_ERROR_LIMIT = 3     # a proposer refused (key revoked, model gone) this often in a row stops the loop
BASELINE_REPEATS = 3       # baseline runs that measure the noise, by default
STARVED_RERUNS = 2         # a starved would-be keep is re-run at most this often before it counts
FAILED = ("crash", "timeout", "invalid")
AWAITING = "would-be keep, awaiting its confirmation run"
RETRY = object()           # try_propose(): a transient error, ask again after the back-off
UNCONFIRMED_STOP = "not confirmed: the loop stopped during its confirmation run"


class Stop(Exception):
    """SIGTERM or SIGINT while the loop itself (not the runner) was busy."""

    def __init__(self, signame):
        super().__init__(f"stopped by {signame}")
        self.signame = signame


class LoopError(Exception):
    """A user mistake or missing precondition: one line, exit 2."""


interrupted = ledger.was_interrupted  # a stop (Ctrl-C, SIGTERM, a killed loop) cut the experiment short


STARVED_RERUN = "; re-run"                  # the end of the cause of a starved would-be keep to run again


def bar_of(row):
    """The val_bpb the row had to beat to be kept (the campaign's reference when it started, less the
    threshold), or None (a baseline run, or no reference yet)."""
    if row.get("is_baseline") or row.get("best_before") is None:
        return None
    return row["best_before"] - (row.get("threshold") or 0.0)


def would_be_keep(row):
    """An undecided row that beat its bar: judged keep, or judged but never kept for training past its
    budget while starved (runner.starved_past_budget) though its val_bpb beat the bar."""
    if runner.starved_past_budget(row):
        bar = bar_of(row)
        return row.get("val_bpb") is not None and (bar is None or row["val_bpb"] < bar)
    return row["status"] == "keep"
MEANWHILE_RERUN = "was kept meanwhile: re-run on it"  # the end of the cause of a swarm result to carry over
NOT_RERUN = " (not re-run: its change does not merge onto the best)"


def rerun_reason(row):
    """Why row's train.py must run again (None: it need not), from its status and cause."""
    cause = row.get("cause") or ""
    if cause.endswith(NOT_RERUN):
        return None
    if interrupted(row) or cause == UNCONFIRMED_STOP:
        return "was cut short by a stop"
    if row["status"] == "discard" and cause.startswith("starved") and cause.endswith(STARVED_RERUN):
        return "was starved"
    if row["status"] == "discard" and cause.endswith(MEANWHILE_RERUN):
        return "beat its start while another keep landed"
    return None


def exit_code(signame):
    return 143 if signame == "SIGTERM" else 130


class _Signals:
    """SIGINT/SIGTERM: raised as Stop while armed (proposing, waiting), else noted and acted on at
    the next step. During an experiment the runner installs its own handlers."""

    def __init__(self):
        self.pending = None
        self.armed = False

    def install(self):
        self.previous = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.previous[sig] = signal.signal(sig, self._handle)

    def uninstall(self):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)

    def reclaim(self):
        """Take SIGINT/SIGTERM back from a library that replaced the handlers (Ray does, in ray.init)."""
        for sig in self.previous:
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        self.pending = signal.Signals(signum).name
        if self.armed:
            self.armed = False
            raise Stop(self.pending)

    def check(self):
        if self.pending:
            raise Stop(self.pending)

    def sleep(self, seconds):
        self.armed = True
        try:
            self.check()
            time.sleep(seconds)
        finally:
            self.armed = False

    def call(self, fn, *args):
        self.armed = True
        try:
            self.check()
            return fn(*args)
        finally:
            self.armed = False


def loop_lock(checkout):
    """One loop per checkout."""
    return gitutil.CheckoutLock(checkout, "autoresearch-loop.lock", lambda pid: LoopError(
        f"another `autoresearch loop` (pid {pid}) is running in this checkout; stop it first, or run this "
        f"one in another worktree (`git worktree add`)"))


def _fmt(value):
    return f"{value:.6f}" if isinstance(value, (int, float)) else "-"


class Loop:
    def __init__(self, repo, tag, proposer_name, *, max_experiments=None, hours=None, max_cost=None,
                 model=None, base_url=None, baseline_repeats=BASELINE_REPEATS, min_delta=None, confirm=False,
                 timeout=None, search_seed=0, search="tpe", screen=None, worker=None, price_input=None, price_output=None, proposer_timeout=1800.0,
                 backoff=5.0, out=sys.stdout, proposer=None, progress=False):
        self.repo = repo
        self.tag = tag
        self.branch = runner.BRANCH_PREFIX + tag
        self.proposer_name = proposer_name
        self.max_experiments = max_experiments
        self.deadline = time.time() + hours * 3600 if hours is not None else None
        self.max_cost = max_cost
        self.model = model
        self.base_url = base_url
        self.baseline_repeats = max(1, baseline_repeats or 1)
        self.min_delta = min_delta
        self.confirm = confirm
        self.timeout = timeout
        self.worker = worker
        self.proposer_options = dict(model=model, base_url=base_url, seed=search_seed, price_input=price_input,
                                     price_output=price_output, cli_timeout=proposer_timeout, sampler=search,
                                     screen=screen)
        self.backoff = backoff
        self.out = out
        self.proposer = proposer  # tests may hand one in
        self.progress = progress  # the running experiment's progress on stderr (runner.run_experiment)
        self.signals = _Signals()
        self.proposals_ok = 0
        self.failures = 0      # proposer errors in a row
        self.retry_wait = 0.0  # the back-off after the last of them

    # -- output -----------------------------------------------------------------------------------
    def say(self, text):
        print(text, file=self.out, flush=True)

    def note(self, kind, text):
        self.say(text)
        self.ledger.event(self.tag, kind, text, self.worker)

    def rows(self):
        return self.ledger.experiments(tag=self.tag)

    def report(self, row):
        """One line per finished experiment: its ledger number (as in `log`, `status` and the report),
        status, val_bpb, the val_bpb it had to beat to be kept (the campaign's reference less the
        threshold: the mean of the kept runs and their repeats, not the best single run), description."""
        bar = bar_of(row)
        cause = f"  [{row['cause']}]" if row.get("cause") and row["status"] != "keep" else ""
        if not cause and row.get("starved"):  # its number says more about the machine than the change
            cause = f"  [starved: {contention.describe(row)}]"
        self.say(f"#{row['id']:<4d} {row['status']:8} val_bpb {_fmt(row.get('val_bpb')):>9}  to beat {_fmt(bar):>9}  "
                 f"{row.get('description') or ''}{cause}")

    # -- budgets ----------------------------------------------------------------------------------
    def finished(self):
        """The experiments that count against --max-experiments: all but those a stop interrupted."""
        return [r for r in self.rows() if r["status"] != "running" and not interrupted(r)]

    def budget_left(self):
        """None while there is budget, else why not."""
        rows = self.rows()
        done = len(self.finished())
        if self.max_experiments is not None and done >= self.max_experiments:
            return f"--max-experiments {self.max_experiments} reached ({done} experiments in campaign {self.tag})"
        if self.deadline is not None and time.time() >= self.deadline:
            return "--hours reached"
        if self.max_cost is not None:
            spent = sum(r.get("cost_usd") or 0.0 for r in rows)
            if spent >= self.max_cost:
                return f"--max-cost {self.max_cost:g} USD reached ({spent:.4f} USD spent)"
        return None

    # -- set-up -----------------------------------------------------------------------------------
    def check_preconditions(self):
        if not gitutil.is_repo(self.repo):
            raise LoopError(f"{os.path.abspath(self.repo)} is not a git checkout; run the loop inside the "
                            f"project's repository")
        self.checkout = gitutil.toplevel(self.repo)
        if not os.path.exists(os.path.join(self.checkout, "train.py")):
            raise LoopError(f"no train.py in {self.checkout}; run the loop in the project's root folder")
        if subprocess.run(["git", "check-ref-format", f"refs/heads/{self.branch}"]).returncode != 0 \
                or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", self.tag):
            raise LoopError(f"--tag {self.tag!r} cannot name a branch; use letters, digits, '.', '_' or '-' "
                            f"(e.g. --tag {time.strftime('%b%d').lower()})")
        if gitutil.git(self.checkout, "rev-parse", "--verify", "--quiet", "HEAD", check=False) == "":
            raise LoopError("the repository has no commit yet; commit the project files first")
        self.rules = runner.read_rules(self.checkout)  # RunError when constants.py is broken
        # RunError when not prepared, or a file of it changed
        self.fingerprint = runner.data_fingerprint(self.rules["profile"], self.rules["profile_dir"])

    def check_campaign(self):
        """An existing campaign goes on only with its own profile and data (RunError: exit 2), and any
        campaign only with a proposer that can be reached (ProposerConfigError: exit 2), before anything
        runs or costs money."""
        campaign = self.ledger.campaign(self.tag)
        if campaign:
            runner.check_campaign_data(campaign, self.rules, self.fingerprint)
        self.proposer.check()

    def checkout_branch(self):
        current = gitutil.current_branch(self.checkout)
        if current == self.branch:
            return
        dirty = gitutil.dirty_paths(self.checkout)
        if dirty:
            raise LoopError(f"the checkout has uncommitted changes ({', '.join(dirty[:5])}); commit or revert "
                            f"them before starting the loop, which switches to branch {self.branch}")
        exists = gitutil.git(self.checkout, "rev-parse", "--verify", "--quiet", f"refs/heads/{self.branch}",
                             check=False)
        if exists:
            gitutil.git(self.checkout, "checkout", "--quiet", self.branch)
            self.say(f"resuming branch {self.branch}")
        else:
            gitutil.git(self.checkout, "checkout", "--quiet", "-b", self.branch)
            self.say(f"created branch {self.branch} at {gitutil.short(gitutil.head(self.checkout))}")

    def save_campaign(self):
        campaign = self.ledger.campaign(self.tag)
        cols = dict(tag=self.tag, confirm=int(self.confirm), proposer=self.proposer_name,
                    model=self.model or getattr(self.proposer, "model", None))
        if self.min_delta is not None or not campaign:
            cols["min_delta"] = self.min_delta or 0.0
        if not campaign or not campaign.get("base_commit"):
            cols.update(branch=self.branch, base_commit=gitutil.head(self.checkout))
        if not campaign or not campaign.get("noise_std"):
            cols["baseline_repeats"] = self.baseline_repeats
        self.ledger.save_campaign(**cols)

    def best_commit(self):
        keeps = self.ledger.experiments(tag=self.tag, status="keep")
        if keeps:
            return keeps[-1]["commit_sha"]
        return self.ledger.campaign(self.tag)["base_commit"]

    BASELINE_FROM_CHECKOUT = True  # the baseline runs train.py as the checkout holds it (runner.run_experiment)

    def restore(self):
        """Recover rows a dead loop left running, then put the branch and tree on the campaign's best;
        whatever else is there is saved under refs/autoresearch/<tag>/leftover-<time> first. Before a
        baseline is kept, branch and tree stay as they are: no proposal ran yet, so they hold the person's
        work (the fix of a train.py whose baseline failed)."""
        with runner.checkout_lock(self.checkout):  # no `autoresearch run` is running here
            for row in runner.recover(self.checkout, self.ledger):
                self.say(f"recovered #{row['id']} ({row['description']}): left running by a stopped loop, "
                         f"recorded as crash")
        for row in self.rows():  # a would-be keep whose confirmation run never finished
            if row["status"] == "discard" and row.get("cause") == AWAITING:
                self.ledger.update_experiment(row["id"], cause=UNCONFIRMED_STOP)
        if self.BASELINE_FROM_CHECKOUT and not self.ledger.experiments(tag=self.tag, status="keep"):
            return  # no baseline kept yet: what is there is the person's (a fix of a baseline that failed)
        target = self.best_commit()
        head = gitutil.head(self.checkout)
        dirty = gitutil.dirty_paths(self.checkout)
        if head == target and not dirty:
            return
        if dirty or head != target:
            saved = self.save_leftover(head, dirty)
            gitutil.reset_hard(self.checkout, target)
            gitutil.remove_untracked(self.checkout, gitutil.untracked_paths(self.checkout))
            self.note("restored", f"restored {self.branch} to the campaign's best {gitutil.short(target)}"
                      + (f"; what was there is saved as {saved}" if saved else ""))

    def save_leftover(self, head, dirty):
        """A commit of HEAD plus the uncommitted changes, kept under refs/autoresearch/<tag>/; its ref."""
        sha = gitutil.commit_worktree(self.checkout, head, "uncommitted changes found by autoresearch loop") \
            if dirty else head
        known = {r["commit_sha"] for r in self.rows()} | {self.ledger.campaign(self.tag)["base_commit"]}
        if sha in known:
            return None
        ref = f"refs/autoresearch/{self.tag}/leftover-{time.strftime('%Y%m%d-%H%M%S')}-{gitutil.short(sha)}"
        gitutil.update_ref(self.checkout, ref, sha)
        return ref

    # -- experiments ------------------------------------------------------------------------------
    def threshold(self):
        campaign = self.ledger.campaign(self.tag) or {}
        return ledger.threshold_of(campaign)

    def next_seed(self):
        """A seed no run of the campaign has had, but one a stop cut short (its run is run again)."""
        seeds = [r["seed"] for r in self.rows() if isinstance(r.get("seed"), int) and not interrupted(r)]
        return max(seeds + [DEFAULT_SEED]) + 1

    def run(self, description, **kw):
        """runner.run_experiment with the loop's settings, undecided (the loop settles it); returns the row."""
        kw.setdefault("proposer", self.proposer_name)
        self.signals.check()
        return runner.run_experiment(self.checkout, description, timeout=self.timeout, worker=self.worker,
                                     ledger=self.ledger, decide=False, progress=self.progress, **kw)

    def measure(self, description, **kw):
        """Run train.py as it is in the checkout; a would-be keep from a starved run is discarded and the
        same train.py re-run on the same seed (at most STARVED_RERUNS times) so that a busy machine
        never decides. Returns the row that counts, undecided."""
        row = self.run(description, **kw)
        for _ in range(STARVED_RERUNS):
            if not (would_be_keep(row) and row.get("starved")) or self.budget_left():
                return row
            train_py = gitutil.show_bytes(self.checkout, f"{row['commit_sha']}:train.py")
            starved = runner.settle(self.checkout, row["id"], keep=False, ledger=self.ledger,
                                    cause=f"starved: {contention.describe(row)}{STARVED_RERUN}")
            self.report(starved)
            self.note("starved", f"#{row['id']} was starved ({contention.describe(row)}): running it again")
            with open(os.path.join(self.checkout, "train.py"), "wb") as f:
                f.write(train_py)
            kw = dict(kw, retry_of=row["id"], prompt_tokens=None, completion_tokens=None, cost_usd=None)
            row = self.run(f"{description} [re-run: #{row['id']} was starved]", **kw)
        return row

    def settle(self, row, keep, cause=None):
        """Keep or discard an undecided row; prints its line; returns it."""
        row = runner.settle(self.checkout, row["id"], keep=keep, ledger=self.ledger, cause=cause)
        self.report(row)
        return row

    def baseline_runs(self):
        return [r for r in self.rows() if r.get("is_baseline") and r["status"] in ("keep", "discard")
                and r.get("val_bpb") is not None and not (r.get("cause") or "").startswith("starved")]

    def ensure_baseline(self):
        """Run the baseline (and its repeats) until the campaign has them; returns False if out of budget."""
        crashes = 0
        while self.ledger.best(self.tag) is None:
            if self.budget_left():
                return False
            row = self.measure("baseline", is_baseline=True, threshold=0.0)
            row = self.settle(row, keep=row["status"] == "keep")
            if row["status"] != "keep":
                crashes += 1
                if crashes >= BASELINE_CRASH_LIMIT:
                    raise LoopError(f"the baseline failed {crashes} times in a row ({row['status']}: "
                                    f"{row.get('cause')}); fix train.py (see run.log) and start the loop again")
        campaign = self.ledger.campaign(self.tag)
        repeats = campaign.get("baseline_repeats") or 1
        if campaign.get("noise_std") is None and repeats > 1:
            crashes = 0
            while len(self.baseline_runs()) < repeats:
                if self.budget_left():
                    return False
                seed = self.next_seed()
                n = len(self.baseline_runs()) + 1
                # a starved repeat is run again, as a starved baseline is (at most STARVED_RERUNS times: on a
                # machine that stays busy, that is its noise)
                row = self.measure(f"baseline (repeat {n}/{repeats}, seed {seed})", seed=seed, is_baseline=True)
                row = self.settle(row, keep=False, cause=f"baseline repeat on seed {seed}: measures the noise")
                crashes = crashes + 1 if row["status"] != "discard" else 0
                if crashes >= BASELINE_CRASH_LIMIT:
                    raise LoopError(f"a baseline repeat failed {crashes} times in a row ({row['status']}: "
                                    f"{row.get('cause')}); see run.log, or start without --baseline-repeats")
            values = [r["val_bpb"] for r in self.baseline_runs()][:repeats]
            noise = statistics.stdev(values)
            self.ledger.save_campaign(tag=self.tag, noise_std=noise)
            self.note("threshold", f"noise: val_bpb std {noise:.6f} over {len(values)} baseline runs "
                                   f"({', '.join(_fmt(v) for v in values)}); keep threshold = max(min_delta "
                                   f"{campaign.get('min_delta') or 0:g}, 2 x {noise:.6f}) = {self.threshold():.6f}")
        elif not self.rows_after_baseline():
            self.note("threshold", f"keep threshold = {self.threshold():.6f} (min_delta "
                                   f"{campaign.get('min_delta') or 0:g}, noise std "
                                   f"{_fmt(campaign.get('noise_std')) if campaign.get('noise_std') else 'not measured'})")
        return True

    def rows_after_baseline(self):
        return [r for r in self.rows() if not r.get("is_baseline")]

    def last_failure(self):
        """The newest finished experiment when it failed: its cause and log tail, for the proposer."""
        ended = sorted((r for r in self.rows() if r["status"] != "running" and r.get("ended_at")),
                       key=lambda r: r["ended_at"])
        if not ended or ended[-1]["status"] not in FAILED:
            return None
        row = ended[-1]
        return (f"experiment #{row['id']} ({row['description']}) ended {row['status']}: {row.get('cause') or ''}\n"
                + (row.get("log_tail") or ""))

    def propose(self):
        """A proposal, or None when it was recorded as invalid; transient errors back off and retry."""
        while True:
            if self.budget_left():
                return None
            proposal = self.try_propose()
            if proposal is not RETRY:
                return proposal
            self.signals.sleep(self.retry_wait)

    def try_propose(self):
        """Ask the proposer once: the proposal; None when its answer was recorded as invalid; RETRY after
        a transient error (noted; self.retry_wait says how long to back off, doubling each time)."""
        train_py = open(os.path.join(self.checkout, "train.py"), encoding="utf-8").read()
        program_path = os.path.join(self.checkout, "program.md")
        program_md = open(program_path, encoding="utf-8").read() if os.path.exists(program_path) else ""
        started = time.time()
        try:
            proposal = self.signals.call(self.proposer.propose, train_py, program_md, self.rows(),
                                         self.last_failure())
            self.proposals_ok += 1
            self.failures = 0
            return proposal
        except ProposalError as e:
            self.proposals_ok += 1
            self.failures = 0
            self.record_invalid(e, started)
            return None
        except Stop:
            raise
        except Exception as e:
            self.failures += 1
            if isinstance(e, ProposerConfigError) and (not self.proposals_ok or self.failures >= CONFIG_ERROR_LIMIT):
                raise LoopError(str(e))
            wait = min(MAX_BACKOFF, self.backoff * 2 ** (self.failures - 1))
            if self.deadline is not None:
                wait = max(0.0, min(wait, self.deadline - time.time()))
            self.retry_wait = wait
            where = f" from {self.proposer.endpoint}" if self.proposer.endpoint else ""
            self.note("proposer_error", f"proposer error ({self.failures} in a row){where}: {type(e).__name__}: "
                                        f"{str(e).strip()[:300]}; retrying in {wait:.0f} s")
            return RETRY

    def record_invalid(self, error, started):
        """A proposal that could not be used: an `invalid` experiment (nothing ran, nothing changed)."""
        head = gitutil.head(self.checkout)
        exp_id = self.ledger.start_experiment(
            tag=self.tag, worker=self.worker or os.environ.get("AUTORESEARCH_WORKER") or socket.gethostname(),
            branch=self.branch, worktree=self.checkout, parent_commit=head,
            description=error.description or f"({self.proposer_name} proposal)", status="invalid",
            cause=f"proposal: {error}", proposer=self.proposer_name, model=error.model or self.model,
            prompt_tokens=error.prompt_tokens, completion_tokens=error.completion_tokens, cost_usd=error.cost_usd,
            profile=self.rules.get("profile"), best_before=self.ledger.reference(self.tag), threshold=self.threshold(),
            started_at=started, ended_at=time.time(), is_baseline=0)
        row = self.ledger.experiment(exp_id)
        results.write(self.checkout, self.ledger, self.tag)
        self.ledger.event(self.tag, "invalid", f"#{exp_id} invalid proposal: {error}", self.worker)
        self.report(row)

    def experiment(self, proposal, retry_of=None):
        """Write the proposal, run it (and with --confirm its re-run), record; returns the last row."""
        with open(os.path.join(self.checkout, "train.py"), "w", encoding="utf-8") as f:
            f.write(proposal.train_py)
        cost = dict(model=proposal.model, prompt_tokens=proposal.prompt_tokens,
                    completion_tokens=proposal.completion_tokens, cost_usd=proposal.cost_usd)
        if proposal.fidelity < 1:
            return self.screen(proposal, retry_of)
        threshold = self.threshold()
        seed = self.next_seed() if proposal.repeat else None
        first = self.measure(proposal.description, threshold=threshold, retry_of=retry_of, seed=seed, **cost)
        if first["status"] != "keep" or not self.confirm:
            return self.settle(first, keep=first["status"] == "keep")
        # a would-be keep: out of the best (discard, pending) while a re-run on a new seed confirms it
        pending = dict(first, status="discard", cause=AWAITING)
        self.ledger.update_experiment(first["id"], status=pending["status"], cause=pending["cause"])
        results.write(self.checkout, self.ledger, self.tag)
        self.report(pending)
        if self.budget_left():  # no room for the confirmation run: not confirmed, not kept
            first = runner.settle(self.checkout, first["id"], keep=False, ledger=self.ledger,
                                  cause="not confirmed: the budget ended before its confirmation run")
            return first
        seed = self.next_seed()
        try:
            second = self.measure(f"{proposal.description} [confirm, seed {seed}]", threshold=threshold, seed=seed,
                                  model=proposal.model)
        except KeyboardInterrupt:
            self.ledger.update_experiment(first["id"], cause=UNCONFIRMED_STOP)
            raise
        confirmed = second["status"] == "keep"
        second = runner.settle(self.checkout, second["id"], keep=confirmed, ledger=self.ledger)
        if confirmed:
            self.ledger.update_experiment(first["id"], status="keep", cause=None)
            results.write(self.checkout, self.ledger, self.tag)
        else:
            cause = f"not confirmed: the re-run on seed {seed} gave {second['status']} {_fmt(second.get('val_bpb'))}"
            self.ledger.update_experiment(first["id"], cause=cause)
        self.report(second)
        return second

    def screen(self, proposal, retry_of=None):
        """A candidate run on a share of the budget: recorded as `screened`, never kept and never compared
        with a full run (the proposer decides which screened candidates earn one)."""
        budget = proposal.fidelity * float(self.rules["time_budget"])
        row = self.run(proposal.description, threshold=self.threshold(), retry_of=retry_of, time_budget=budget,
                       model=proposal.model, prompt_tokens=proposal.prompt_tokens,
                       completion_tokens=proposal.completion_tokens, cost_usd=proposal.cost_usd)
        row = runner.settle(self.checkout, row["id"], keep=False, ledger=self.ledger)
        if row["status"] == "discard":
            self.ledger.update_experiment(row["id"], status="screened")
            results.write(self.checkout, self.ledger, self.tag)
            row = self.ledger.experiment(row["id"])
        self.report(row)
        return row

    def unfinished(self):
        """Experiments whose train.py must run again and has not yet (no row names them in retry_of),
        oldest first: those a stop cut short (interrupted, or would-be keeps whose confirmation never
        finished), starved would-be keeps, and results that beat their start while another keep
        landed (swarm). The ledger says which: nothing else remembers them."""
        rows = self.rows()
        retried = {r["retry_of"] for r in rows if r.get("retry_of")}
        first_of = {}  # commit -> its first row (a confirmation run shares its proposal's commit)
        last_of = {}
        for r in rows:
            if r.get("commit_sha") and not r.get("is_baseline"):
                first_of.setdefault(r["commit_sha"], r)
                last_of[r["commit_sha"]] = r
        return [first for sha, first in first_of.items()
                if first["id"] not in retried and last_of[sha]["id"] not in retried and rerun_reason(last_of[sha])]

    def train_py_on_best(self, row):
        """row's train.py as a change on the campaign's current best: as it is when the best is still the
        commit it started from, else its change merged onto the best (git merge-file); None when that
        does not merge (or the text cannot be read)."""
        try:
            text = gitutil.show_bytes(self.checkout, f"{row['commit_sha']}:train.py").decode("utf-8")
            best = self.best_commit()
            if row["parent_commit"] == best or not row.get("parent_commit"):
                return text
            base = gitutil.show_bytes(self.checkout, f"{row['parent_commit']}:train.py").decode("utf-8")
            current = gitutil.show_bytes(self.checkout, f"{best}:train.py").decode("utf-8")
        except (gitutil.GitError, UnicodeDecodeError):
            return None
        return gitutil.merge_text(base, current, text)

    def rerun(self, row):
        """(description, train_py) of row's re-run on the current best; None (noted) when it cannot be."""
        reason = rerun_reason(row) or "was cut short by a stop"  # (the stop may show on its confirmation run)
        train_py = self.train_py_on_best(row)
        if train_py is None:
            self.note("retry", f"#{row['id']} ({row['description']}) cannot run again: its change does not merge "
                               f"onto the campaign's best any more")
            self.ledger.update_experiment(row["id"], cause=(row.get("cause") or "") + NOT_RERUN)
            return None
        self.note("retry", f"#{row['id']} ({row['description']}) {reason}: running it again")
        return f"{row['description']} [re-run of #{row['id']}]", train_py

    def run_unfinished(self):
        """Run again what must run again (see unfinished()), before any new proposal."""
        for row in self.unfinished():
            if self.budget_left():
                return
            again = self.rerun(row)
            if again:
                full = float(self.rules["time_budget"])
                fidelity = min(1.0, (row.get("time_budget") or full) / full)  # a screening run stays one
                self.experiment(Proposal(description=again[0], train_py=again[1], model=row.get("model"),
                                         fidelity=fidelity), retry_of=row["id"])

    # -- the loop ---------------------------------------------------------------------------------
    def main(self):
        self.signals.install()
        try:
            return self._main()
        finally:
            self.signals.uninstall()

    def open(self):
        """Set up: the ledger, the proposer, the checks (nothing runs or costs money before them), the
        branch, the campaign's row, a clean tree on the campaign's best; then say where it stands."""
        self.ledger = Ledger(repo=self.checkout)
        if self.proposer is None:
            self.proposer = get_proposer(self.proposer_name, repo=self.checkout, **self.proposer_options)
        try:
            self.check_campaign()
        except BaseException:
            self.proposer.close()
            raise
        self.checkout_branch()
        self.save_campaign()
        self.restore()
        self.say_settings()

    def _main(self):
        self.check_preconditions()
        with loop_lock(self.checkout):
            self.open()
            try:
                if self.ensure_baseline():
                    self.run_unfinished()
                    while not self.budget_left():
                        self.signals.check()
                        proposal = self.propose()
                        if proposal is None:
                            continue
                        self.signals.check()
                        self.experiment(proposal)
            finally:
                self.proposer.close()
            self.finish(self.budget_left() or "budget spent")
        return 0

    def say_settings(self):
        """What the campaign is and where it stands, before the first experiment."""
        rules, campaign = self.rules, self.ledger.campaign(self.tag) or {}
        noise = campaign.get("noise_std")
        repeats = campaign.get("baseline_repeats") or 1
        noise_text = (f"noise std {noise:.6f}" if noise is not None else
                      f"noise: {repeats} baseline runs will measure it" if repeats > 1 else "noise not measured")
        self.say(f"campaign {self.tag}: {len(self.finished())} experiments so far, best "
                 f"{_fmt(self.ledger.reference(self.tag))}; proposer {self.proposer_name}"
                 + (f" ({self.proposer.sampler}" + (f", screening on {self.proposer.screen:.0%} of the budget"
                                                    if getattr(self.proposer, "screen", None) else "") + ")"
                    if getattr(self.proposer, "sampler", None) else "")
                 + (f" at {self.proposer.endpoint}" if self.proposer.endpoint else "")
                 + f"; {noise_text}")
        self.say(f"profile {rules['profile']}: {rules['time_budget']:g} s of training per experiment, data "
                 f"{runner.data_source(rules['profile_dir'])}; device {_device()}; sandbox {runner.executor_name()}")
        self.say(f"ledger {self.ledger.path}")

    def finish(self, why):
        rows = self.finished()  # as --max-experiments counts them: runs a stop cut short are not experiments
        kept = sum(r["status"] == "keep" and not r.get("is_baseline") for r in rows)  # as status counts them
        best = self.ledger.reference(self.tag)
        self.note("done", f"done: {why}. Campaign {self.tag}: {len(rows)} experiments, baseline + {kept} kept, "
                          f"best val_bpb {_fmt(best)} at {gitutil.short(self.best_commit())} on branch {self.branch}. "
                          f"Results: `autoresearch log --tag {self.tag}`, {os.path.join(self.checkout, 'results.tsv')}")

    def clean_up_after_stop(self):
        """After Ctrl-C/SIGTERM outside an experiment: no half-written train.py left behind."""
        try:
            dirty = gitutil.dirty_paths(self.checkout)
            if dirty == ["train.py"]:
                gitutil.git(self.checkout, "checkout", "--", "train.py")
        except Exception:
            pass


def _device():
    """The device train.py will pick, as the harness sees it (without importing torch)."""
    gpus = sandbox.gpu_count()
    if gpus:
        return f"cuda ({gpus} GPU{'s' if gpus > 1 else ''})"
    if sys.platform == "darwin" and platform.machine() == "arm64":
        return "mps"
    return f"cpu ({os.cpu_count()} cores)"


def cmd_loop(args):
    loop = Loop(".", args.tag, args.proposer, max_experiments=args.max_experiments, hours=args.hours,
                max_cost=args.max_cost, model=args.model, base_url=args.base_url,
                baseline_repeats=args.baseline_repeats, min_delta=args.min_delta, confirm=args.confirm,
                timeout=args.timeout, search_seed=args.search_seed, search=args.search, screen=args.screen,
                worker=args.worker, price_input=args.price_input,
                price_output=args.price_output, proposer_timeout=args.proposer_timeout, backoff=args.backoff,
                progress=True)
    return run_cli(loop)


def run_cli(loop):
    """Run a campaign (a Loop or a Swarm) for the command line: errors as one line and exit codes."""
    try:
        return loop.main()
    except (LoopError, runner.RunError, ProposerConfigError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except gitutil.GitError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except (Stop, KeyboardInterrupt) as e:
        signame = e.signame if isinstance(e, Stop) else ("SIGTERM" if "SIGTERM" in str(e) else "SIGINT")
        if hasattr(loop, "checkout"):
            loop.clean_up_after_stop()
        print(f"\nstopped by {signame}; the ledger and the checkout are consistent. "
              f"Resume with the same command.", file=sys.stderr)
        return exit_code(signame)


def register(subparsers):
    p = subparsers.add_parser(
        "loop", help="run a campaign: propose, run, decide, record, until a budget is spent",
        description="The never-stopping research loop on branch autoresearch/<tag>: a baseline, then "
                    "proposals from the chosen proposer, each run, kept or discarded and recorded. "
                    "Resumes a campaign that already exists; Ctrl-C or SIGTERM stops it cleanly.")
    p.add_argument("--tag", required=True, help="campaign tag: branch autoresearch/<tag>")
    add_campaign_arguments(p)
    p.add_argument("--worker", help="worker name in the ledger (default: $AUTORESEARCH_WORKER or the host name)")
    p.set_defaults(func=cmd_loop)


def _fraction(text):
    """An argparse type: a number strictly between 0 and 1."""
    value = float(text)
    if not 0 < value < 1:
        raise ValueError(text)
    return value


_fraction.__name__ = "fraction between 0 and 1"


def add_campaign_arguments(p, confirm=True):
    """The options a campaign has whoever runs it (loop, swarm): proposer, budgets, noise."""
    p.add_argument("--proposer", choices=list(REGISTRY), default="search",
                   help="who proposes each change (default: search, no LLM)")
    p.add_argument("--max-experiments", type=cli.positive(int), metavar="N",
                   help="stop when the campaign has N finished experiments (all of them: baseline, repeats, "
                        "confirmations, re-runs, invalid proposals; one a stop interrupted is run again)")
    p.add_argument("--hours", type=cli.positive(float), metavar="H", help="start no experiment after H hours")
    p.add_argument("--max-cost", type=cli.non_negative, metavar="USD",
                   help="stop when the campaign's LLM cost reaches USD")
    p.add_argument("--model", help="the model the proposer asks (openai, anthropic, claude, codex)")
    p.add_argument("--base-url", metavar="URL",
                   help="OpenAI-compatible endpoint, e.g. http://localhost:11434/v1 (Ollama), or an Anthropic proxy")
    p.add_argument("--baseline-repeats", type=cli.positive(int), default=BASELINE_REPEATS, metavar="K",
                   help=f"run the baseline K times on different seeds to measure the noise, which sets the "
                        f"keep threshold (default {BASELINE_REPEATS}; 1 skips it)")
    p.add_argument("--min-delta", type=cli.non_negative, metavar="D",
                   help="keep only if val_bpb beats the best by more than max(D, 2 x noise std) (default 0)")
    if confirm:
        p.add_argument("--confirm", action="store_true",
                       help="re-run a would-be keep on a new seed; keep it only if both runs beat the best")
    p.add_argument("--timeout", type=cli.positive(float), metavar="S",
                   help="kill a training run after S seconds (default: 2 x the budget + 120)")
    p.add_argument("--search-seed", type=int, default=0, metavar="N",
                   help="seed of the search proposer's choices (default 0); training seeds are 42, 43, ...")
    p.add_argument("--search", choices=["tpe", "cmaes", "random"], default="tpe",
                   help="the search proposer's sampler: tpe (default: a model of the campaign's results), "
                        "cmaes, or random one- or two-knob steps")
    p.add_argument("--screen", type=_fraction, metavar="FRACTION",
                   help="search proposer: run each candidate first on FRACTION of the time budget (recorded "
                        "as `screened`, never kept); the best third of them earn a full run")
    p.add_argument("--price-input", type=cli.non_negative, metavar="USD",
                   help="USD per million prompt tokens, for a model missing from the price table")
    p.add_argument("--price-output", type=cli.non_negative, metavar="USD",
                   help="USD per million completion tokens, for a model missing from the price table")
    p.add_argument("--proposer-timeout", type=cli.positive(float), default=1800.0, metavar="S",
                   help="kill a claude/codex proposer after S seconds (default 1800)")
    p.add_argument("--backoff", type=cli.non_negative, default=5.0, metavar="S",
                   help="first wait after a proposer error; doubles up to 5 minutes (default 5)")
