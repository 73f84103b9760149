"""
The Ray backend of `autoresearch swarm`: each experiment is a Ray task.

    autoresearch swarm --tag T --backend ray [--ray-address ADDR] --workers N

- `--ray-address` joins a running cluster (`ray start --head`, KubeRay, SkyPilot, Slurm); without it
  a local single-node cluster is started, so the same command works on a laptop. Ray stays an
  optional extra: `pip install 'autoresearch[ray]'`.
- A task asks for one GPU where the cluster has GPUs, else its worker's share of the CPUs (Ray sets
  CUDA_VISIBLE_DEVICES and OMP_NUM_THREADS for it).
- The task ships the spec, not the repository: train.py and the base commit's fixed files with their
  git blob ids (sandbox.Spec.shipped). On its node it reads the rules from those files, prepares the
  profile's data once per node if it is missing (under a lock), and refuses to run unless the data's
  fingerprint is the campaign's; then it runs the spec with the executor (sandboxed, trusted
  evaluation) and sends back the Outcome and the end of the log.
- A worker or node that dies under a task is reported as lost: the driver runs the experiment again
  and records an event. Tasks are never retried by Ray itself (max_retries=0), so each attempt is seen.
"""

import dataclasses
import fcntl
import os
import socket
import subprocess
import sys
import tempfile

from autoresearch import executor, runner, sandbox
from autoresearch.swarm import Done, SwarmError

# the harness's own settings a task takes from the driver (never the cache: each node has its own)
FORWARDED_ENV = ("AUTORESEARCH_EXECUTOR", "AUTORESEARCH_TIME_BUDGET", "AUTORESEARCH_SANDBOX",
                 "AUTORESEARCH_STARVED_SHARE", sandbox.PASS_ENV)
LOG_BYTES = runner.MAX_ARCHIVED_LOG  # the end of a run's log sent back


class DataMismatch(RuntimeError):
    """A node's prepared data is not the campaign's."""


def forwarded_env():
    names = list(FORWARDED_ENV) + [n.strip() for n in os.environ.get(sandbox.PASS_ENV, "").split(",") if n.strip()]
    return {name: os.environ[name] for name in names if name in os.environ}


def prepared_fingerprint(rules_dir, profile, profile_dir):
    """The node's data fingerprint of the profile, preparing it first (once, under a lock) when missing."""
    try:
        return runner.data_fingerprint(profile, profile_dir)
    except runner.RunError:
        pass
    os.makedirs(os.path.dirname(profile_dir), exist_ok=True)
    with open(profile_dir.rstrip(os.sep) + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another task on this node may be preparing it
        try:
            return runner.data_fingerprint(profile, profile_dir)
        except runner.RunError:
            proc = subprocess.run([sys.executable, "prepare.py", "--profile", profile], cwd=rules_dir,
                                  capture_output=True, text=True)
            if proc.returncode != 0:
                last = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or [f"exit {proc.returncode}"]
                raise DataMismatch(f"node {socket.gethostname()} could not prepare profile {profile}: {last[0]}")
            return runner.data_fingerprint(profile, profile_dir)


def run_task(spec, time_budget, timeout, fingerprint, env):
    """The task, on whichever node Ray chose: (Outcome as a dict, the end of the log, the node's name)."""
    import ray
    for name in FORWARDED_ENV:
        os.environ.pop(name, None)
    os.environ.update(env, AUTORESEARCH_PROFILE=spec.profile)
    placement = {"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    gpus = ray.get_gpu_ids()
    if gpus:
        placement["CUDA_VISIBLE_DEVICES"] = ",".join(str(g) for g in gpus)
    with tempfile.TemporaryDirectory(prefix="autoresearch-task-") as work:
        rules_dir = os.path.join(work, "rules")
        sandbox.materialize(spec, None, rules_dir)  # the fixed files the spec carries, verified
        rules = runner.read_rules(rules_dir)
        got = prepared_fingerprint(rules_dir, spec.profile, rules["profile_dir"])
        if got != fingerprint:
            raise DataMismatch(f"node {socket.gethostname()}: the prepared data of profile {spec.profile} is not "
                               f"the campaign's (fingerprint {got[:12]} vs {fingerprint[:12]}); prepare it there "
                               f"from the same source")
        log_path = os.path.join(work, "run.log")
        outcome = runner.load_executor()(spec, None, rules["profile_dir"], time_budget, log_path, timeout,
                                         placement=placement)
        # measured from this Ray worker, the swarm's other tasks on the node count as "others": that is
        # their fixed share, not starvation (the GPU check stands: it is per GPU)
        outcome.cpu_share_others = None
        log = runner.file_end(log_path, LOG_BYTES) or b""
    return dataclasses.asdict(outcome), log, socket.gethostname()


class RayBackend:
    """Swarm workers as Ray tasks (see the module's docstring)."""
    name = "ray"

    def __init__(self, workers, repo, rules, ledger, fingerprint, address=None):
        try:
            import ray
        except ImportError:
            raise SwarmError("the ray backend needs Ray: pip install 'autoresearch[ray]'") from None
        self.ray, self.repo, self.rules, self.ledger, self.fingerprint = ray, repo, rules, ledger, fingerprint
        self.slots = list(range(workers))
        self.started_cluster = False
        if not ray.is_initialized():
            options = dict(include_dashboard=False, log_to_driver=False, configure_logging=False)
            try:
                if address:
                    ray.init(address=address, **options)
                else:
                    ray.init(address="local", num_cpus=os.cpu_count(), num_gpus=sandbox.gpu_count(), **options)
            except Exception as e:
                raise SwarmError(f"cannot start or join the Ray cluster{f' at {address}' if address else ''}: "
                                 f"{(str(e).strip().splitlines() or [type(e).__name__])[0]}") from None
            self.started_cluster = True
        resources = ray.cluster_resources()
        if resources.get("GPU"):
            need = dict(num_gpus=1, num_cpus=1)
        else:  # the cluster's CPUs shared between the workers
            need = dict(num_cpus=max(1, int(resources.get("CPU", 1)) // workers))
        self.task = ray.remote(run_task).options(max_retries=0, **need)
        self.running = {}  # ref -> (job, slot)
        self.cancelled = False

    def idle(self):
        return len(self.slots)

    def jobs(self):
        return {job.exp_id for job, _ in self.running.values()}

    def submit(self, job):
        slot = self.slots.pop(0)
        spec = job.spec.shipped(self.repo)
        ref = self.task.remote(spec, job.time_budget, job.timeout, self.fingerprint, forwarded_env())
        self.running[ref] = (job, slot)
        return f"ray{slot + 1}"

    def ready(self, timeout):
        if not self.running:
            return []
        try:
            ready, _ = self.ray.wait(list(self.running), num_returns=1, timeout=timeout)
        except SystemError as e:  # Ctrl-C: the loop's Stop, raised in Ray's compiled wait, comes out wrapped
            if isinstance(e.__context__, Exception) and not isinstance(e.__context__, SystemError):
                raise e.__context__ from None
            raise
        return ready

    def take(self, ready):
        done = []
        for ref in ready:
            job, slot = self.running.pop(ref)
            self.slots.append(slot)
            try:
                outcome, log, node = self.ray.get(ref)
            except Exception as e:
                done.append(self._failed(job, e))
                continue
            with open(job.log_path, "wb") as f:
                f.write(log)
            self.ledger.update_experiment(job.exp_id, host=node)
            done.append(Done(job, outcome=executor.Outcome(**outcome)))
        return done

    def _failed(self, job, error):
        """A task that returned no result: cancelled by us, lost with its worker or node (or a node that
        cannot hold the campaign's data: another node may), or failed in the harness's own code."""
        ray = self.ray
        if self.cancelled:
            return Done(job, outcome=executor.Outcome(stopped="cancelled"))
        cause = getattr(error, "cause", None) or error
        lost = tuple(getattr(ray.exceptions, name) for name in (
            "WorkerCrashedError", "NodeDiedError", "LocalRayletDiedError", "RaySystemError", "OutOfMemoryError",
            "ObjectLostError", "OwnerDiedError", "RuntimeEnvSetupError", "TaskUnschedulableError")
            if hasattr(ray.exceptions, name))
        if isinstance(error, lost) or isinstance(cause, DataMismatch):
            return Done(job, lost=f"{type(cause).__name__}: {(str(cause).strip().splitlines() or [''])[0][:200]}")
        return Done(job, error=f"{type(cause).__name__}: {(str(cause).strip().splitlines() or [''])[-1][:300]}")

    def cancel(self, force=False):
        """Cancel every task: first by an interrupt inside it (the executor then stops its training),
        with force=True by killing its worker process."""
        self.cancelled = True
        for ref in list(self.running):
            try:
                self.ray.cancel(ref, force=force)
            except Exception:
                pass

    def close(self):
        self.cancel()
        if self.started_cluster:
            self.ray.shutdown()
