"""
`autoresearch swarm --tag T --workers N [--proposer P] [--devices 0,1] [--backend local|ray]`:
one campaign, many workers.

The driver (this process) owns git, the ledger and the proposer; workers only run experiments. A
worker gets an experiment's spec (its train.py, the campaign's base commit, the profile, the seed:
sandbox.Spec) and returns the executor's Outcome and the run's log, wherever it runs, sandboxed and
evaluated by the harness's trusted evaluator (executor.py). The rules:
- The baseline runs alone first; its repeats (--baseline-repeats, default 3) run in parallel.
- Every experiment starts from the campaign's best at the time it is dispatched. The proposer sees the
  whole history, the experiments in flight included, so it does not propose one of them again.
- A result is kept when it beats the best by the threshold AND the best is still the commit it started
  from. When another worker's keep landed meanwhile, a result that beat its own starting point is not
  thrown away: its change is merged onto the new best (git merge-file) and run again there, first in
  the queue; a change that does not merge is discarded, and its cause says so. A starved would-be
  keep is run again the same way (contention.py).
- Devices: on CUDA one GPU per worker (--devices, default all of them), never two experiments on one
  GPU; on a CPU the workers split the cores (OMP_NUM_THREADS), so results compare only within a
  campaign run with the same number of workers.
- Ctrl-C or SIGTERM cancels every run in flight and records it as interrupted (exit 130/143); the same
  command resumes the campaign and runs those again first, none lost, none twice. A worker lost in the
  middle of an experiment (a Ray worker or node that died) puts the experiment back in the queue and
  records an event.
Backends: `local` (threads of this process, each driving one sandboxed run) and `ray` (each
experiment a Ray task asking for one GPU or its share of CPUs; --ray-address joins a running cluster,
otherwise a local one is started, so the same command works on a laptop). Budgets are the loop's.
"""

import collections
import concurrent.futures
import dataclasses
import os
import socket
import threading
import time

from autoresearch import cli, contention, executor, gitutil, loop, results, runner, sandbox
from autoresearch.loop import Loop, LoopError, Stop

WAIT = 0.5            # seconds between looks at the workers
LOST_RETRIES = 3      # a job whose worker was lost this often is recorded as a crash


class SwarmError(LoopError):
    """A user mistake (bad --devices, Ray missing): one line, exit 2."""


@dataclasses.dataclass
class Job:
    """One experiment on its way to a worker: its ledger row and its spec."""
    exp_id: int
    spec: sandbox.Spec
    log_path: str
    timeout: float
    lost: int = 0         # times its worker was lost


@dataclasses.dataclass
class Done:
    job: Job
    outcome: executor.Outcome = None
    error: str = None     # the worker failed to run it (not the experiment: that is in the outcome)
    lost: str = None      # the worker died under it: run it again


def placements(workers, devices=None):
    """The environment of each worker slot: one GPU each on CUDA, else an equal share of the cores."""
    gpus = sandbox.gpu_count()
    if gpus:
        devices = devices or [str(i) for i in range(gpus)]
        if workers is None:
            workers = len(devices)
        if workers > len(devices):
            raise SwarmError(f"{workers} workers need {workers} GPUs, but --devices names {len(devices)} "
                             f"({','.join(devices)}); never two experiments share a GPU")
        return [{"CUDA_VISIBLE_DEVICES": d} for d in devices[:workers]]
    if devices:
        raise SwarmError("--devices names GPUs, and this machine has none; use --workers alone on a CPU")
    workers = workers or 1
    threads = max(1, (os.cpu_count() or 1) // workers)
    return [{"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)} for _ in range(workers)]


class LocalBackend:
    """Worker slots on this machine: a thread each, driving one sandboxed run at a time."""
    name = "local"

    def __init__(self, slots, repo, rules, ledger):
        self.slots, self.repo, self.rules, self.ledger = slots, repo, rules, ledger
        self.free = list(range(len(slots)))
        self.pool = concurrent.futures.ThreadPoolExecutor(len(slots), thread_name_prefix="worker")
        self.running = {}  # future -> (job, slot, cancel event)

    def idle(self):
        return len(self.free)

    def submit(self, job):
        """Start the job on a free slot; returns the worker's name."""
        slot = self.free.pop(0)
        cancel = threading.Event()

        def started(pgid, folder):
            self.ledger.update_experiment(job.exp_id, pgid=pgid, workdir=folder)

        future = self.pool.submit(runner.load_executor(), job.spec, self.repo, self.rules["profile_dir"],
                                  float(self.rules["time_budget"]), job.log_path, job.timeout, started=started,
                                  placement=self.slots[slot], cancel=cancel)
        self.running[future] = (job, slot, cancel)
        return f"w{slot + 1}"

    def wait(self, timeout):
        finished, _ = concurrent.futures.wait(list(self.running), timeout=timeout,
                                              return_when=concurrent.futures.FIRST_COMPLETED)
        done = []
        for future in finished:
            job, slot, _ = self.running.pop(future)
            self.free.append(slot)
            try:
                done.append(Done(job, outcome=future.result()))
            except Exception as e:  # the executor itself failed (e.g. the spec could not be built)
                done.append(Done(job, error=f"{type(e).__name__}: {e}"))
        return done

    def cancel(self):
        for _, _, event in self.running.values():
            event.set()

    def close(self):
        self.cancel()
        self.pool.shutdown(wait=True)


class Swarm(Loop):
    """The loop's campaign (budgets, baseline, noise, proposer, resume), with experiments in flight on
    several workers at once."""

    def __init__(self, repo, tag, proposer_name, *, workers=None, devices=None, backend="local", ray_address=None,
                 **options):
        super().__init__(repo, tag, proposer_name, **options)
        self.workers, self.devices = workers, devices
        self.backend_name, self.ray_address = backend, ray_address
        self.inflight = {}   # exp_id -> Job
        self.queue = collections.deque()  # (description, train_py, extra ledger columns): run these first
        self.retry_at = 0.0  # no proposal before this time (the proposer is backing off)

    # -- budgets: what is in flight counts too -------------------------------------------------
    def room(self):
        """Whether another experiment may be dispatched now."""
        if self.budget_left():
            return False
        if self.max_experiments is not None:
            return len(self.finished()) + len(self.inflight) < self.max_experiments
        return True

    # -- dispatch -------------------------------------------------------------------------------
    def best_train_py(self):
        return gitutil.show_bytes(self.checkout, f"{self.best_commit()}:train.py").decode("utf-8")

    def dispatch(self, description, train_py, *, seed=None, is_baseline=False, **cols):
        """Commit train.py on the current best (not in the working tree), open its ledger row, start it."""
        parent = self.best_commit()
        commit = parent if is_baseline else gitutil.commit_file(self.checkout, parent, "train.py", train_py,
                                                                description)
        if commit != parent:  # reachable whatever the outcome
            gitutil.update_ref(self.checkout, runner.discarded_ref(self.tag, commit), commit)
        timeout = self.timeout or 2 * float(self.rules["time_budget"]) + runner.TIMEOUT_MARGIN
        exp_id = self.ledger.start_experiment(
            tag=self.tag, worker="?", branch=self.branch, worktree=self.checkout, parent_commit=parent,
            commit_sha=commit, diff=gitutil.diff(self.checkout, parent, commit), description=description,
            profile=self.rules["profile"], time_budget=self.rules["time_budget"], seed=seed, host=self.host,
            proposer=cols.pop("proposer", self.proposer_name), timeout_s=timeout, best_before=self.ledger.best(self.tag),
            threshold=self.threshold(), is_baseline=int(is_baseline), sandbox=runner.executor_name(), **cols)
        log_path = os.path.join(os.path.dirname(self.ledger.path), "logs", f"{self.tag}-{exp_id}.log")
        os.makedirs(os.path.dirname(log_path), exist_ok=True)
        self.ledger.update_experiment(exp_id, log_path=log_path)
        spec = sandbox.Spec(train_py=train_py, base_commit=self.ledger.campaign(self.tag)["base_commit"],
                            profile=self.rules["profile"], seed=seed)
        job = Job(exp_id, spec, log_path, timeout)
        self.start(job)
        return exp_id

    def start(self, job):
        worker = self.backend.submit(job)
        self.inflight[job.exp_id] = job
        self.ledger.update_experiment(job.exp_id, worker=worker, started_at=time.time())
        row = self.ledger.experiment(job.exp_id)
        self.say(f"#{job.exp_id:<4d} started  on {worker}: {row['description']}")

    def next_proposal(self):
        """Dispatch the next queued re-run or a new proposal (None: nothing was dispatched). A proposer
        error is not waited out here: results keep coming in while it backs off."""
        if self.queue:
            description, train_py, cols = self.queue.popleft()
            return self.dispatch(description, train_py, **cols)
        if time.time() < self.retry_at:
            return None
        proposal = self.try_propose()  # history includes the experiments in flight (status running)
        if proposal is loop.RETRY:
            self.retry_at = time.time() + self.retry_wait
            return None
        if proposal is None:
            return None
        cost = dict(model=proposal.model, prompt_tokens=proposal.prompt_tokens,
                    completion_tokens=proposal.completion_tokens, cost_usd=proposal.cost_usd)
        return self.dispatch(proposal.description, proposal.train_py, **cost)

    # -- results ------------------------------------------------------------------------------------
    def collect(self, timeout=WAIT):
        """Record what the workers finished; returns the finished rows."""
        self.signals.armed = True
        try:
            self.signals.check()
            done = self.backend.wait(timeout)
        finally:
            self.signals.armed = False
        return [row for row in (self.record(d) for d in done) if row is not None]

    def record(self, done):
        job = done.job
        if done.lost:
            job.lost += 1
            self.note("lost", f"#{job.exp_id}: its worker was lost ({done.lost}); "
                              + ("running it again" if job.lost < LOST_RETRIES else "recorded as crash"))
            if job.lost < LOST_RETRIES:
                self.inflight.pop(job.exp_id)
                self.start(job)
                return None
            done = Done(job, error=f"its worker was lost {job.lost} times ({done.lost})")
        self.inflight.pop(job.exp_id, None)
        row = self.ledger.experiment(job.exp_id)
        try:
            with open(job.log_path, "rb") as f:
                f.seek(max(0, os.path.getsize(job.log_path) - runner.MAX_ARCHIVED_LOG))
                text = f.read().decode("utf-8", "replace")
        except OSError:
            text = ""
        if done.outcome is None:
            status, cause = "crash", f"the worker could not run it: {done.error}"
        else:
            status, cause = runner.judge_outcome(done.outcome, runner.claims(text), text, self.rules["time_budget"])
        cols = runner.result_columns(done.outcome, text, status)
        if done.outcome is not None and done.outcome.stopped == "cancelled":
            cause = f"interrupted ({self.signals.pending or 'cancelled'})"
        if status == "keep":
            status, cause = self.decide(row, cols)
        self.ledger.finish_experiment(job.exp_id, status=status, cause=cause, **cols)
        if status == "keep":
            gitutil.reset_hard(self.checkout, row["commit_sha"])  # the branch (checked out) moves to it
        results.write(self.checkout, self.ledger, self.tag)
        row = self.ledger.experiment(job.exp_id)
        val = row["val_bpb"]
        self.ledger.event(self.tag, status, f"#{job.exp_id} {gitutil.short(row['commit_sha'])} {status}"
                          + (f" val_bpb {val:.6f}" if val is not None else "") + f": {row['description']}",
                          row["worker"])
        self.report(row)
        return row

    def decide(self, row, cols):
        """(status, cause) of a judged run (the swarm's keep rule, see the module's docstring)."""
        val, best, threshold = cols["val_bpb"], self.ledger.best(self.tag), self.threshold()
        if row["is_baseline"]:
            if best is None and not cols.get("starved"):
                return "keep", None
            if best is None:
                self.queue.appendleft(("baseline", self.best_train_py(), dict(is_baseline=True, retry_of=row["id"])))
                return "discard", f"starved: {contention.describe(cols)}; re-run"
            return "discard", f"baseline repeat on seed {row['seed']}: measures the noise"
        start = row["best_before"]
        if start is None or not val < start - threshold:
            return "discard", None
        train_py = gitutil.show_bytes(self.checkout, f"{row['commit_sha']}:train.py").decode("utf-8")
        current = self.best_commit()
        if row["parent_commit"] == current:
            if not cols.get("starved"):
                return "keep", None
            self.queue.appendleft((f"{row['description']} [re-run: #{row['id']} was starved]", train_py,
                                   dict(seed=row["seed"], retry_of=row["id"])))
            return "discard", f"starved: {contention.describe(cols)}; re-run"
        # another worker's keep landed while this one ran: carry its change over to the new best
        base = gitutil.show_bytes(self.checkout, f"{row['parent_commit']}:train.py").decode("utf-8")
        merged = gitutil.merge_text(base, self.best_train_py(), train_py)
        newer = self.ledger.experiments(tag=self.tag, status="keep")[-1]
        if merged is None:
            return "discard", (f"beat its start ({start:.6f}) but #{newer['id']} was kept meanwhile, and its "
                               f"change does not merge onto that")
        self.queue.appendleft((f"{row['description']} [on #{newer['id']}]", merged, dict(retry_of=row["id"])))
        return "discard", f"beat its start ({start:.6f}) but #{newer['id']} was kept meanwhile: re-run on it"

    # -- phases ---------------------------------------------------------------------------------------
    def drain(self):
        """Wait for everything in flight."""
        while self.inflight:
            self.collect()

    def run_baseline(self):
        """The baseline alone, then its repeats side by side; returns False when out of budget."""
        crashes = 0
        while self.ledger.best(self.tag) is None:
            if not self.room():
                return False
            if not self.queue:
                self.dispatch("baseline", self.best_train_py(), is_baseline=True)
            else:
                self.next_proposal()
            self.drain()
            last = self.rows()[-1]
            crashes = crashes + 1 if last["status"] not in ("keep", "discard") else 0
            if crashes >= loop.BASELINE_CRASH_LIMIT:
                raise LoopError(f"the baseline failed {crashes} times in a row ({last['status']}: {last.get('cause')}); "
                                f"fix train.py (see its log: {last.get('log_path')}) and start the swarm again")
        campaign = self.ledger.campaign(self.tag)
        repeats = campaign.get("baseline_repeats") or 1
        failed = 0
        while campaign.get("noise_std") is None and len(self.baseline_runs()) < repeats:
            if failed >= loop.BASELINE_CRASH_LIMIT:
                raise LoopError(f"baseline repeats failed {failed} times; see their logs (autoresearch log), "
                                f"or start with --baseline-repeats 1")
            missing = repeats - len(self.baseline_runs()) - len(self.inflight)
            while missing > 0 and self.backend.idle() and self.room():
                seed = max([self.next_seed()] + [j.spec.seed + 1 for j in self.inflight.values() if j.spec.seed])
                n = len(self.baseline_runs()) + len(self.inflight) + 1
                self.dispatch(f"baseline (repeat {n}/{repeats}, seed {seed})", self.best_train_py(), seed=seed,
                              is_baseline=True)
                missing -= 1
            if not self.inflight:
                return False
            failed += sum(r["status"] not in ("keep", "discard") for r in self.collect())
        self.ensure_baseline()  # measures the noise from the runs (nothing left to run)
        return True

    def unfinished_to_queue(self):
        for row in self.unfinished():
            try:
                train_py = gitutil.show_bytes(self.checkout, f"{row['commit_sha']}:train.py").decode("utf-8")
            except (gitutil.GitError, UnicodeDecodeError):
                continue
            self.note("retry", f"#{row['id']} ({row['description']}) was cut short by a stop: running it again")
            self.queue.append((f"{row['description']} [re-run of #{row['id']}]", train_py,
                               dict(retry_of=row["id"], model=row.get("model"))))

    def _main(self):
        self.check_preconditions()
        self.slots = placements(self.workers, self.devices)
        with loop._LoopLock(self.checkout):
            self.open()
            with runner._CheckoutLock(self.checkout):  # no `autoresearch run` here meanwhile
                return self._swarm()

    def _swarm(self):
        self.backend = make_backend(self)
        try:
            self.say(f"swarm: {len(self.slots)} workers ({self.backend.name} backend)")
            self.unfinished_to_queue()
            if self.run_baseline():
                while True:
                    while self.backend.idle() and self.room():
                        self.signals.check()
                        if self.next_proposal() is None and time.time() < self.retry_at:
                            break
                    if not self.inflight:
                        if not self.room():
                            break
                        self.signals.sleep(max(0.0, self.retry_at - time.time()))
                        continue
                    self.collect()
        except (Stop, KeyboardInterrupt):
            self.stop_all()
            raise
        finally:
            self.proposer.close()
            self.backend.close()
        self.finish(self.budget_left() or "budget spent")
        return 0

    def open(self):
        self.host = socket.gethostname()
        super().open()

    def stop_all(self):
        """Cancel every run in flight and record each as interrupted."""
        self.signals.armed = False
        self.backend.cancel()
        while self.inflight:
            for done in self.backend.wait(WAIT):
                done.lost = None
                self.record(done)


def make_backend(swarm):
    if swarm.backend_name == "ray":
        from autoresearch import raybackend
        return raybackend.RayBackend(swarm.slots, swarm.checkout, swarm.rules, swarm.ledger, swarm.fingerprint,
                                     address=swarm.ray_address)
    return LocalBackend(swarm.slots, swarm.checkout, swarm.rules, swarm.ledger)


def cmd_swarm(args):
    devices = [d.strip() for d in args.devices.split(",") if d.strip()] if args.devices else None
    swarm = Swarm(".", args.tag, args.proposer, workers=args.workers, devices=devices, backend=args.backend,
                  ray_address=args.ray_address, max_experiments=args.max_experiments, hours=args.hours,
                  max_cost=args.max_cost, model=args.model, base_url=args.base_url,
                  baseline_repeats=args.baseline_repeats, min_delta=args.min_delta, timeout=args.timeout,
                  search_seed=args.search_seed, price_input=args.price_input, price_output=args.price_output,
                  proposer_timeout=args.proposer_timeout, backoff=args.backoff)
    return loop.run_cli(swarm)


def register(subparsers):
    p = subparsers.add_parser(
        "swarm", help="run one campaign on several workers (GPUs, CPU shares, a Ray cluster)",
        description="The research loop with several experiments in flight: one driver (git, ledger, proposer), "
                    "workers that only run experiments, sandboxed. Every experiment starts from the best at "
                    "dispatch; a result that beat its start while another keep landed is re-run on the new best. "
                    "Ctrl-C or SIGTERM stops every worker; the same command resumes.")
    p.add_argument("--tag", required=True, help="campaign tag: branch autoresearch/<tag>")
    p.add_argument("--workers", type=cli.positive(int), metavar="N",
                   help="experiments at once (default: one per GPU; 1 on a CPU machine, whose cores they split)")
    p.add_argument("--devices", metavar="LIST", help="GPUs to use, e.g. 0,1,3 (default: all); one worker each")
    p.add_argument("--backend", choices=("local", "ray"), default="local",
                   help="local: worker threads in this process (default); ray: Ray tasks (pip install "
                        "'autoresearch[ray]')")
    p.add_argument("--ray-address", metavar="ADDR",
                   help="join this Ray cluster (e.g. auto, or ray://head:10001); default: start a local one")
    loop.add_campaign_arguments(p, confirm=False)
    p.set_defaults(func=cmd_swarm)
