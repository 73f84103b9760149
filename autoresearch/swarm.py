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

import concurrent.futures
import dataclasses
import os
import socket
import threading
import time

from autoresearch import cli, compilecache, contention, executor, gitutil, hostfiles, loop, results, runner, sandbox
from autoresearch.loop import Loop, LoopError

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
    time_budget: float    # seconds of training (less than the profile's for a screening run)
    lost: int = 0         # times its worker was lost


@dataclasses.dataclass
class Done:
    job: Job
    outcome: executor.Outcome = None
    error: str = None     # the worker failed to run it (not the experiment: that is in the outcome)
    lost: str = None      # the worker died under it: run it again
    compile_cache: str = None  # the run's own copy of the compile cache, adopted if it is kept (compilecache.py)


def placements(workers, devices=None):
    """The environment of each worker slot: one GPU each on CUDA, else an equal share of the cores; and
    an equal share of the memory the runs may hold (limits.Group)."""
    gpus = sandbox.gpu_count()
    if gpus:
        devices = devices or [str(i) for i in range(gpus)]
        if workers is None:
            workers = len(devices)
        if workers > len(devices):
            raise SwarmError(f"{workers} workers need {workers} GPUs, but --devices names {len(devices)} "
                             f"({','.join(devices)}); never two experiments share a GPU")
        return [{"CUDA_VISIBLE_DEVICES": d, "memory_share": 1 / workers} for d in devices[:workers]]
    if devices:
        raise SwarmError("--devices names GPUs, and this machine has none; use --workers alone on a CPU")
    workers = workers or 1
    threads = max(1, (os.cpu_count() or 1) // workers)
    return [{"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "memory_share": 1 / workers}
            for _ in range(workers)]


class LocalBackend:
    """Worker slots on this machine: a thread each, driving one sandboxed run at a time."""
    name = "local"

    def __init__(self, slots, repo, rules, ledger, caches=None):
        self.slots, self.repo, self.rules, self.ledger, self.caches = slots, repo, rules, ledger, caches
        self.free = list(range(len(slots)))
        self.pool = concurrent.futures.ThreadPoolExecutor(len(slots), thread_name_prefix="worker")
        self.running = {}  # future -> (job, slot, cancel event, compile cache workspace)

    def idle(self):
        return len(self.free)

    def jobs(self):
        """The exp_ids this backend still runs."""
        return {job.exp_id for job, *_ in self.running.values()}

    def submit(self, job):
        """Start the job on a free slot; returns the worker's name."""
        slot = self.free.pop(0)
        cancel = threading.Event()

        def started(pgid, folder):
            self.ledger.update_experiment(job.exp_id, pgid=pgid, workdir=folder)

        workspace = self.caches.workspace() if self.caches else None
        try:
            future = self.pool.submit(runner.load_executor(), job.spec, self.repo, self.rules["profile_dir"],
                                      job.time_budget, job.log_path, job.timeout, started=started,
                                      placement=self.slots[slot], cancel=cancel, compile_cache=workspace,
                                      eval_compile_cache=self.caches.evaluator_cache() if self.caches else None)
        except BaseException:
            self.free.insert(0, slot)
            if workspace:
                hostfiles.remove_private(workspace)
            raise
        self.running[future] = (job, slot, cancel, workspace)
        return f"w{slot + 1}"

    def ready(self, timeout):
        """Wait (interruptibly) until a run ends or timeout passes: the handles of the ended ones."""
        finished, _ = concurrent.futures.wait(list(self.running), timeout=timeout,
                                              return_when=concurrent.futures.FIRST_COMPLETED)
        return finished

    def take(self, finished):
        """The results of the ended runs (bookkeeping only: no waiting)."""
        done = []
        for future in finished:
            job, slot, _, workspace = self.running.pop(future)
            self.free.append(slot)
            try:
                done.append(Done(job, outcome=future.result(), compile_cache=workspace))
            except Exception as e:  # the executor itself failed (e.g. the spec could not be built)
                done.append(Done(job, error=f"{type(e).__name__}: {e}", compile_cache=workspace))
        return done

    def cancel(self, force=False):
        for _, _, event, _ in self.running.values():
            event.set()

    def close(self):
        self.cancel()
        self.pool.shutdown(wait=True)


class Swarm(Loop):
    """The loop's campaign (budgets, baseline, noise, proposer, resume), with experiments in flight on
    several workers at once. What must run again is read from the ledger (Loop.unfinished), never kept
    only in memory: a stop at any moment loses nothing."""

    def __init__(self, repo, tag, proposer_name, *, workers=None, devices=None, backend="local", ray_address=None,
                 **options):
        super().__init__(repo, tag, proposer_name, **options)
        self.workers, self.devices = workers, devices
        self.backend_name, self.ray_address = backend, ray_address
        self.inflight = {}   # exp_id -> Job
        self.retry_at = 0.0  # no proposal before this time (the proposer is backing off)
        self.backend = None

    BASELINE_FROM_CHECKOUT = False  # its baseline is the base commit's train.py, committed apart (dispatch)

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

    def dispatch(self, description, train_py, *, seed=None, is_baseline=False, time_budget=None, **cols):
        """Commit train.py on the current best (not in the working tree), open its ledger row, start it.
        time_budget: a screening run's share of the budget (seconds)."""
        full = float(self.rules["time_budget"])
        budget = time_budget if time_budget is not None and time_budget < full else full
        parent = self.best_commit()
        commit = parent if is_baseline else gitutil.commit_file(self.checkout, parent, "train.py", train_py,
                                                                description)
        if commit != parent:  # reachable whatever the outcome
            gitutil.update_ref(self.checkout, runner.discarded_ref(self.tag, commit), commit)
        timeout = self.timeout or 2 * budget + runner.TIMEOUT_MARGIN
        exp_id = self.ledger.start_experiment(
            tag=self.tag, worker="?", branch=self.branch, worktree=self.checkout, parent_commit=parent,
            commit_sha=commit, diff=gitutil.diff(self.checkout, parent, commit), description=description,
            profile=self.rules["profile"], time_budget=budget, seed=seed, host=self.host,
            proposer=cols.pop("proposer", self.proposer_name), timeout_s=timeout, best_before=self.ledger.reference(self.tag),
            threshold=self.threshold(), is_baseline=int(is_baseline), sandbox=runner.executor_name(), **cols)
        log_path = os.path.join(os.path.dirname(self.ledger.path), "logs", f"{self.tag}-{exp_id}.log")
        os.makedirs(os.path.dirname(log_path), exist_ok=True)
        self.ledger.update_experiment(exp_id, log_path=log_path)
        spec = sandbox.Spec(train_py=train_py, base_commit=self.ledger.campaign(self.tag)["base_commit"],
                            profile=self.rules["profile"], seed=seed, time_budget=budget if budget < full else None)
        self.start(Job(exp_id, spec, log_path, timeout, budget))
        return exp_id

    def start(self, job):
        worker = self.backend.submit(job)
        self.inflight[job.exp_id] = job
        self.ledger.update_experiment(job.exp_id, worker=worker, started_at=time.time())
        row = self.ledger.experiment(job.exp_id)
        self.say(f"#{job.exp_id:<4d} started  on {worker}: {row['description']}")

    def next_experiment(self):
        """Dispatch what must run again (the ledger says, see Loop.unfinished) or a new proposal; None
        when nothing was dispatched. A proposer error is not waited out here: results keep coming in
        while it backs off."""
        for row in self.unfinished():
            again = self.rerun(row)
            if again:  # on the same seed when starved; a screening run stays one
                seed = row["seed"] if (row.get("cause") or "").startswith("starved") else None
                return self.dispatch(*again, seed=seed, retry_of=row["id"], model=row.get("model"),
                                     time_budget=row.get("time_budget"))
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
        seed = None
        if proposal.repeat:  # a repeated measurement: a seed no finished or running experiment used
            seed = max([self.next_seed()] + [j.spec.seed + 1 for j in self.inflight.values() if j.spec.seed])
        return self.dispatch(proposal.description, proposal.train_py, seed=seed,
                             time_budget=proposal.fidelity * float(self.rules["time_budget"]), **cost)

    # -- results ------------------------------------------------------------------------------------
    def collect(self, timeout=WAIT):
        """Record what the workers finished; returns the finished rows. Only the wait itself can be cut
        by a signal: a result taken from the backend is always recorded."""
        finished = self.signals.call(self.backend.ready, timeout)
        rows = []
        for done in self.backend.take(finished):
            row = self.record_safely(done)
            if row is not None:
                rows.append(row)
        return rows

    def record_safely(self, done):
        """record(), and if recording itself fails (a bug, a full disk), the row still ends: as a crash
        whose cause says so, so that nothing is left `running`."""
        try:
            return self.record(done)
        except Exception as e:
            self.settle_cache(done, keep=False)
            self.inflight.pop(done.job.exp_id, None)
            self.ledger.finish_experiment(done.job.exp_id, status="crash",
                                          cause=f"the harness could not record its result: {type(e).__name__}: {e}")
            results.write(self.checkout, self.ledger, self.tag)
            return self.ledger.experiment(done.job.exp_id)

    def record(self, done):
        job = done.job
        if done.lost:
            job.lost += 1
            self.note("lost", f"#{job.exp_id}: its worker was lost ({done.lost}); "
                              + ("running it again" if job.lost < LOST_RETRIES else "recorded as crash"))
            self.settle_cache(done, keep=False)
            if job.lost < LOST_RETRIES:
                self.inflight.pop(job.exp_id)
                self.start(job)
                return None
            done = Done(job, error=f"its worker was lost {job.lost} times ({done.lost})")
        self.inflight.pop(job.exp_id, None)
        row = self.ledger.experiment(job.exp_id)
        text = (runner.trim_log(job.log_path) or b"").decode("utf-8", "replace")
        if done.outcome is None:
            status, cause = "crash", f"the worker could not run it: {done.error}"
        else:
            status, cause = runner.judge_outcome(done.outcome, runner.claims(text), text, job.time_budget)
        cols = runner.result_columns(done.outcome, text, status, seed=row["seed"])
        if done.outcome is not None:
            if done.outcome.stopped == "cancelled":
                cause = f"interrupted ({self.signals.pending or 'cancelled'})"
            if not os.environ.get(runner.EXECUTOR_ENV):  # how it really ran, wherever that was
                cols["sandbox"] = "bwrap" if done.outcome.sandboxed else "none"
        past_budget = runner.starved_past_budget({"cause": cause})
        if status == "keep" or past_budget:  # the latter: starved, so decide may run it again
            status, decided = self.decide(row, cols)
            if past_budget and not row["is_baseline"] and (status == "keep" or decided is None):
                status, decided = "discard", cause  # judged, never kept (a baseline sets the bar regardless)
            cause = decided
        if status == "keep":
            gitutil.reset_hard(self.checkout, row["commit_sha"])  # the branch (checked out) moves to it
        row = runner.record_finish(self.ledger, self.checkout, job.exp_id, status, cause, cols)
        self.settle_cache(done, runner.adopts_compile_cache(self.checkout, job.spec, status), kept=status == "keep")
        self.report(row)
        return row

    def settle_cache(self, done, keep, kept=False):
        """Adopt the run's compile cache (runner.adopts_compile_cache), or throw it away; the program its
        evaluator evaluated is the one later evaluators compile ahead when the run was kept."""
        if done.outcome is not None:
            compilecache.settle_program(done.outcome.program, kept)
            done.outcome.program = None
        if done.compile_cache:
            adopted = runner.compile_caches(self.ledger, self.tag).settle(done.compile_cache, adopt=keep)
            done.compile_cache = None
            if adopted:
                self.note("compile-cache", f"#{done.job.exp_id}: {adopted}")

    def starved_reruns(self, row):
        """How many times row's train.py already ran again because it was starved."""
        n, ancestor = 0, row.get("retry_of")
        while ancestor:
            parent = self.ledger.experiment(ancestor)
            if not parent or not (parent.get("cause") or "").startswith("starved"):
                break
            n, ancestor = n + 1, parent.get("retry_of")
        return n

    def decide(self, row, cols):
        """(status, cause) of a judged run (the swarm's keep rule, see the module's docstring). A re-run
        it asks for is written in the cause; Loop.unfinished finds it there."""
        if (row.get("time_budget") or 0) < float(self.rules["time_budget"]):
            return "screened", None  # a screening run is never kept nor compared with full runs
        val, best, threshold = cols["val_bpb"], self.ledger.best(self.tag), self.threshold()
        starved = cols.get("starved") and self.starved_reruns(row) < loop.STARVED_RERUNS
        if row["is_baseline"]:
            starved_before = sum(r.get("is_baseline") and (r.get("cause") or "").startswith("starved")
                                 for r in self.rows())
            starved = cols.get("starved") and starved_before < loop.STARVED_RERUNS
            if best is None and not starved:
                return "keep", None
            if starved:  # not a noise sample either; run_baseline runs another baseline (or repeat)
                return "discard", f"starved: {contention.describe(cols)}"
            return "discard", f"baseline repeat on seed {row['seed']}: measures the noise"
        start = row["best_before"]
        if start is None or not val < start - threshold:
            return "discard", None
        if runner.same_train_py(self.checkout, row["commit_sha"], row["parent_commit"]):  # a carried-over change
            return "discard", runner.repeat_cause(row["parent_commit"])                  # the best holds already
        if row["parent_commit"] == self.best_commit():
            if not starved:
                return "keep", None
            return "discard", f"starved: {contention.describe(cols)}{loop.STARVED_RERUN}"
        # another worker's keep landed while this one ran: its change is carried over to the new best
        newer = self.ledger.experiments(tag=self.tag, status="keep")[-1]
        return "discard", f"beat its start ({start:.6f}) but #{newer['id']} {loop.MEANWHILE_RERUN}"

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
            self.dispatch("baseline", self.best_train_py(), is_baseline=True)
            self.drain()
            last = self.rows()[-1]
            crashes = crashes + 1 if last["status"] not in ("keep", "discard") else 0
            if crashes >= loop.BASELINE_CRASH_LIMIT:
                raise LoopError(f"the baseline failed {crashes} times in a row ({last['status']}: {last.get('cause')}; "
                                f"its log: {last.get('log_path')}); the swarm runs the campaign's base commit: fix "
                                f"train.py, commit it and start a new campaign (another --tag)")
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
                n = len(self.baseline_runs()) + len(self.inflight) + 1  # (in flight: only repeats here)
                self.dispatch(f"baseline (repeat {n}/{repeats}, seed {seed})", self.best_train_py(), seed=seed,
                              is_baseline=True)
                missing -= 1
            if not self.inflight:
                return False
            failed += sum(r["status"] not in ("keep", "discard") for r in self.collect())
        self.ensure_baseline()  # measures the noise from the runs (nothing left to run)
        return True

    def _main(self):
        if self.ray_address and self.backend_name != "ray":  # before anything changes
            raise SwarmError("--ray-address joins a Ray cluster: pass --backend ray with it")
        self.check_preconditions()
        if self.backend_name == "local":
            self.slots = placements(self.workers, self.devices)  # a bad --devices: before anything changes
        with loop.loop_lock(self.checkout):
            self.open()
            with runner.checkout_lock(self.checkout):  # no `autoresearch run` here meanwhile
                return self._swarm()

    def _swarm(self):
        try:
            self.backend = make_backend(self)
            self.signals.reclaim()  # (Ray's init takes SIGTERM for itself)
            workers = self.backend.idle()
            self.say(f"swarm: {workers} worker{'' if workers == 1 else 's'} ({self.backend.name} backend)")
            if self.run_baseline():
                while True:
                    while self.backend.idle() and self.room():
                        self.signals.check()
                        if self.next_experiment() is None and time.time() < self.retry_at:
                            break
                    if not self.inflight:
                        if not self.room():
                            break
                        self.signals.sleep(max(0.0, self.retry_at - time.time()))
                        continue
                    self.collect()
        except BaseException:
            self.stop_all()  # whatever stopped the swarm, nothing it started is left running or unrecorded
            raise
        finally:
            self.proposer.close()
            if self.backend is not None:
                self.backend.close()
        self.finish(self.budget_left() or "budget spent")
        return 0

    def open(self):
        self.host = socket.gethostname()
        super().open()

    def stop_all(self):
        """Cancel every run in flight and record each as interrupted (Loop.unfinished runs them again)."""
        if self.backend is None:
            return
        self.signals.armed = False
        self.backend.cancel()
        forced_at = time.time() + 15
        while self.inflight:
            orphans = set(self.inflight) - self.backend.jobs()  # taken from the backend, not yet recorded
            for exp_id in orphans:
                self.record_safely(Done(self.inflight[exp_id], outcome=executor.Outcome(stopped="cancelled")))
            for done in self.backend.take(self.backend.ready(WAIT)):
                done.lost = None
                if done.outcome is None:
                    done.outcome = executor.Outcome(stopped="cancelled")
                self.record_safely(done)
            if time.time() > forced_at:
                self.backend.cancel(force=True)


def make_backend(swarm):
    if swarm.backend_name == "ray":  # Ray places the work: one GPU a task, or the cluster's CPUs shared
        from autoresearch import raybackend
        return raybackend.RayBackend(swarm.workers or 1, swarm.checkout, swarm.rules, swarm.ledger,
                                     swarm.fingerprint, address=swarm.ray_address)
    caches = runner.compile_caches(swarm.ledger, swarm.tag)
    caches.trim_evaluator_cache()  # now, before any of the workers' evaluators runs
    return LocalBackend(swarm.slots, swarm.checkout, swarm.rules, swarm.ledger, caches)


def cmd_swarm(args):
    devices = [d.strip() for d in args.devices.split(",") if d.strip()] if args.devices else None
    swarm = Swarm(".", args.tag, args.proposer, workers=args.workers, devices=devices, backend=args.backend,
                  ray_address=args.ray_address, max_experiments=args.max_experiments, hours=args.hours,
                  max_cost=args.max_cost, model=args.model, base_url=args.base_url,
                  baseline_repeats=args.baseline_repeats, min_delta=args.min_delta, timeout=args.timeout,
                  search_seed=args.search_seed, search=args.search, screen=args.screen,
                  price_input=args.price_input, price_output=args.price_output,
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
