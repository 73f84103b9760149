"""
One experiment, start to finish: `autoresearch run -m DESCRIPTION [--timeout S] [--seed N]`.

In a checkout on the campaign branch `autoresearch/<tag>`:
  1. Integrity. Against the campaign's base commit (HEAD when the tag's first experiment ran) only
     `train.py` may differ: any other tracked file changed, added or deleted, or an untracked file git
     does not ignore, makes the experiment `invalid` (the harness's own run.log, results.tsv,
     .autoresearch/ and __pycache__ do not count). So does a change of the data cache: the sha256 of
     the profile's manifest.json + tokenizer.json must match the one recorded with the campaign.
  2. Commit what changed (message = description); the row goes into the ledger as `running`.
  3. `python train.py` in its own process group (env AUTORESEARCH_SEED when --seed is given),
     stdout and stderr to run.log; at the timeout (default 2 x TIME_BUDGET + 120 s) the whole group
     gets SIGTERM, then SIGKILL. Files the run itself changes in the checkout or the cache make it
     `invalid` too.
  4. Status: keep / discard / crash (cause: OOM, the FAIL line, the exception, or the exit code) /
     timeout / invalid. With no best yet (the baseline) a finished run is `keep`; otherwise keep iff
     val_bpb < best - threshold, best being the campaign's reference (Ledger.reference: the lowest
     mean over its kept commits of their unstarved results, so the baseline counts as the mean of its
     noise repeats) and the threshold the argument, else max(min_delta, 2 x noise_std) of the
     campaign, else 0.
  5. A keep leaves the branch on the experiment's commit. Anything else resets the branch (hard) to
     the start point and saves the experiment's commit as refs/autoresearch/<tag>/<short sha>.
     The start point is the newest commit on HEAD's first-parent line that is the campaign's base or
     a `keep` of the ledger; commits an agent made itself since then belong to the experiment.
  6. The ledger row is finished and results.tsv (checkout root) is written anew from the ledger: the
     campaign's experiments in the reference's columns (autoresearch/results.py).

decide=False (the loop's baseline repeats and confirmation runs): the status is worked out the same
way and recorded, but the branch is not moved (the experiment's commit stays checked out); call
settle() afterwards to keep or discard it for good. An invalid experiment is reverted regardless.

Ctrl-C or SIGTERM while training: the process group is killed, the row is recorded as `crash` with
cause "interrupted", the tree is reset to the start point (the commit saved under refs/autoresearch/),
results.tsv shows the crash, and Interrupted (a KeyboardInterrupt) is raised; `run` exits 130.
A signal at any other moment is held back until the ledger and the tree agree again. A row still
`running` from a runner that died (kill -9, reboot) is recorded as crash the next time this checkout
runs an experiment (see recover()); the row holds the training's process group (pgid) and host, so
a training the dead runner left behind on this machine is stopped first.
"""

import hashlib
import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

from autoresearch import cli, compilecache, contention, executor, gitutil, results, sandbox
from autoresearch.executor import EXPORT_ALLOWANCE, KILL_GRACE, execute
from autoresearch.ledger import Ledger, threshold_of

BRANCH_PREFIX = "autoresearch/"
TIMEOUT_MARGIN = 120.0   # seconds over twice the budget before a run is killed
LOG_TAIL_LINES = 50
MAX_ARCHIVED_LOG = 8 << 20  # bytes of an experiment's log kept in .autoresearch/logs/
PRINTED_TOLERANCE = 2e-6  # train.py prints the trusted value to 6 decimals
CLAIM_TOLERANCE = 2.0     # seconds a claimed training time may exceed the measured one (clock granularity)
# how far past the budget a training may say it trained: the step in flight when the budget ran out,
# at least LAST_STEP seconds, else this share of the budget (widened as others took the CPUs)
LAST_STEP, LAST_STEP_SHARE = 5.0, 0.05
SUMMARY_COLUMNS = ["val_bpb", "training_seconds", "total_seconds", "peak_vram_mb", "mfu_percent",
                   "total_tokens_M", "num_steps", "num_params_M", "depth", "tokens_per_second"]
OOM_PATTERN = re.compile(r"out of memory|OutOfMemoryError|MemoryError|Cannot allocate memory", re.I)


class RunError(Exception):
    """A user mistake or a missing precondition: one line saying what is wrong and how to fix it."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM during an experiment; `row` is the experiment as recorded (or None)."""

    def __init__(self, message="interrupted", row=None):
        super().__init__(message)
        self.row = row


# -- small pure helpers ------------------------------------------------------------------------
def _lines(text):
    """Log lines, splitting progress lines written with '\\r' as well as on newlines."""
    return [line for line in re.split(r"[\r\n]+", text) if line.strip()]


def _number(text):
    if re.fullmatch(r"[+-]?\d+", text):
        return int(text)
    try:
        return float(text)
    except ValueError:
        return text


def parse_summary(text):
    """The `key: value` lines from the last `val_bpb:` line on, numbers as int/float ({} if none)."""
    lines = re.split(r"[\r\n]+", text)
    starts = [i for i, line in enumerate(lines) if line.startswith("val_bpb:")]
    if not starts:
        return {}
    summary = {}
    for line in lines[starts[-1]:]:
        m = re.match(r"([A-Za-z_][A-Za-z0-9_]*):\s*(.*?)\s*$", line)
        if m:
            summary.setdefault(m.group(1), _number(m.group(2)))
    return summary


def crash_cause(log_text, returncode):
    """Why a run failed, in one line: OOM, the FAIL line, the exception, a signal or the exit code."""
    lines = _lines(log_text)
    for line in reversed(lines):
        if OOM_PATTERN.search(line):
            return "OOM: " + line.strip()[:300]
    for line in reversed(lines):
        if line.startswith("FAIL:"):
            return line.strip()[:300]
    tracebacks = [i for i, line in enumerate(lines) if line.startswith("Traceback (most recent call last)")]
    if tracebacks:
        block = lines[tracebacks[-1] + 1:]
        where = [line.strip() for line in block if line.lstrip().startswith('File "')]
        final = [line.strip() for line in block if not line.startswith((" ", "\t"))]
        message = final[-1] if final else block[-1].strip()
        return f"exception: {message[:300]}" + (f" ({where[-1]})" if where else "")
    compile_error = [i for i, line in enumerate(lines) if re.match(r"(SyntaxError|IndentationError|TabError): ", line)]
    if compile_error:  # Python prints no traceback header for a train.py that does not compile
        where = [line.strip() for line in lines[:compile_error[-1]] if line.lstrip().startswith('File "')]
        return f"exception: {lines[compile_error[-1]].strip()[:300]}" + (f" ({where[-1]})" if where else "")
    if returncode is not None and returncode < 0:
        name = signal.Signals(-returncode).name
        return f"killed by {name}" + (" (out of memory?)" if name == "SIGKILL" else "")
    return f"exit code {returncode} without a val_bpb line"


def file_end(path, limit):
    """The last `limit` bytes of a file (a log can be any size); None when it cannot be read."""
    try:
        with open(path, "rb") as f:
            f.seek(max(0, os.path.getsize(path) - limit))
            return f.read()
    except OSError:
        return None


def trim_log(path):
    """Cut a kept log down to its last MAX_ARCHIVED_LOG bytes (a run may write up to the executor's
    WRITE_LIMIT into it); returns what is kept, None when it cannot be read."""
    end = file_end(path, MAX_ARCHIVED_LOG)
    try:
        if end is not None and os.path.getsize(path) > len(end):
            with open(path, "r+b") as f:
                f.write(end)
                f.truncate()
    except OSError:
        pass
    return end


def compile_caches(ledger, tag):
    """The campaign's compile caches, beside its ledger (compilecache.py says what persists)."""
    return compilecache.CompileCaches(os.path.join(os.path.dirname(ledger.path), "compile-cache", tag))


def adopts_compile_cache(checkout, spec, status):
    """Whether a finished run's compile cache becomes the one later runs start from: only a kept run
    of the campaign's own train.py (the base commit's, which a person committed). Any other train.py
    could leave more than compiled kernels there (its weights, for one, for the next runs to go on
    training from), and no check of the files could tell."""
    if status != "keep":
        return False
    try:
        base = gitutil.show_bytes(checkout, f"{spec.base_commit}:train.py").decode("utf-8", "replace")
    except gitutil.GitError:
        return False
    return spec.train_py == base


def archive_log(ledger, tag, exp_id, log_path):
    """Keep a finished experiment's log beside the ledger (run.log is the next run's): its path, or
    log_path itself when there is nothing to keep. At most MAX_ARCHIVED_LOG bytes, the end of it."""
    try:
        size = os.path.getsize(log_path)
        folder = os.path.join(os.path.dirname(ledger.path), "logs")
        os.makedirs(folder, exist_ok=True)
        kept = os.path.join(folder, f"{tag}-{exp_id}.log")
        with open(log_path, "rb") as src, open(kept, "wb") as dst:
            src.seek(max(0, size - MAX_ARCHIVED_LOG))
            shutil.copyfileobj(src, dst)
        return kept
    except OSError:
        return log_path


def log_tail(log_text, n=LOG_TAIL_LINES):
    return "\n".join(_lines(log_text)[-n:])


def campaign_tag(repo):
    """The campaign tag of the checkout's branch autoresearch/<tag>; RunError on any other branch."""
    if not gitutil.is_repo(repo):
        raise RunError(f"{os.path.abspath(repo)} is not a git checkout; run inside the project's repository")
    branch = gitutil.current_branch(repo)
    if not branch or not branch.startswith(BRANCH_PREFIX) or branch == BRANCH_PREFIX:
        example = time.strftime("%b%d").lower()
        raise RunError(f"not on a campaign branch (current: {branch or 'detached HEAD'}); create one with "
                       f"`git checkout -b autoresearch/<tag>`, e.g. `git checkout -b autoresearch/{example}`")
    return branch[len(BRANCH_PREFIX):]


def discarded_ref(tag, sha):
    return f"refs/autoresearch/{tag}/{gitutil.short(sha)}"


# -- the rules and the data --------------------------------------------------------------------
# constants.py run from its source text, with the checkout kept off the import path: no bytecode of it
# is looked for (a .pyc planted in the checkout's ignored __pycache__ with the source's stamp would be
# trusted), and a torch.py planted beside it is not the torch it imports to pick a profile
_PROBE = ("import json, types; c = types.ModuleType('constants'); c.__file__ = 'constants.py'; "
          "exec(compile(open('constants.py', encoding='utf-8').read(), 'constants.py', 'exec'), c.__dict__); "
          "print(json.dumps({'profile': c.PROFILE, 'time_budget': c.TIME_BUDGET, "
          "'profile_dir': c.profile_dir(c.PROFILE)}))")


def read_rules(checkout):
    """Profile, time budget and data folder as the checkout's constants.py sees them (env included),
    in an isolated interpreter (-I: nothing of the checkout, PYTHONPATH or the user's site on its path)."""
    proc = subprocess.run([sys.executable, "-I", "-c", _PROBE], cwd=checkout, capture_output=True, text=True)
    if proc.returncode != 0:
        lines = (proc.stderr or proc.stdout).strip().splitlines()
        said = lines[-1].removeprefix("error: ") if lines else f"exit status {proc.returncode}"
        raise RunError(f"cannot read the rules from constants.py: {said}")  # the CLI says "error: " once
    return json.loads(proc.stdout.strip().splitlines()[-1])


_HASHED = {}  # (path, size, mtime_ns, ctime_ns, inode) -> sha256: a file rewritten since has a new ctime


def file_sha256(path):
    st = os.stat(path)
    key = (path, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)
    if key not in _HASHED:
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        _HASHED[key] = digest.hexdigest()
    return _HASHED[key]


def data_fingerprint(profile, profile_dir):
    """The identity of a prepared profile: sha256 of its manifest without `prepared_at` (re-preparing
    the same data gives the same fingerprint), after checking every file the manifest lists against
    its sha256. RunError when it is not prepared or a file does not match."""
    path = os.path.join(profile_dir, "manifest.json")
    fix = f"run `python prepare.py --profile {profile}`"
    try:
        with open(path, "rb") as f:
            manifest = json.loads(f.read())
    except OSError:
        raise RunError(f"profile {profile!r} is not prepared ({path} is missing); {fix}")
    except ValueError:
        raise RunError(f"{path} is not valid JSON; {fix}")
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(files, dict) or not files:
        raise RunError(f"profile {profile!r} was prepared by an older prepare.py (no file hashes); {fix}")
    for name, expected in sorted(files.items()):
        full = os.path.join(profile_dir, name)
        if not os.path.isfile(full):
            raise RunError(f"{full} is missing from the prepared profile; {fix}")
        if file_sha256(full) != expected:
            raise RunError(f"{full} does not match its sha256 in the manifest (changed after prepare.py); {fix}")
    manifest.pop("prepared_at", None)
    return hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()


def check_campaign_data(campaign, rules, fingerprint):
    """RunError when the checkout's profile or prepared data are not the ones the campaign started
    with: its results would not be comparable (nothing is recorded, nothing runs)."""
    tag, profile = campaign.get("tag"), rules["profile"]
    if campaign.get("profile") and profile != campaign["profile"]:
        raise RunError(f"campaign {tag} runs on profile {campaign['profile']}, but this checkout now selects "
                       f"{profile} (the last prepare.py, or AUTORESEARCH_PROFILE); set "
                       f"AUTORESEARCH_PROFILE={campaign['profile']}, or start a new campaign with another tag")
    if campaign.get("fingerprint") and fingerprint != campaign["fingerprint"]:
        raise RunError(f"the prepared data of profile {profile} is not the data campaign {tag} started with "
                       f"(prepared again from another source or version?); prepare the campaign's data again, "
                       f"or start a new campaign with another tag")


def data_source(profile_dir):
    """The source a prepared profile was made from, as its manifest says ("?" when it does not)."""
    try:
        with open(os.path.join(profile_dir, "manifest.json"), "rb") as f:
            source = json.loads(f.read()).get("source")
    except (OSError, ValueError, AttributeError):
        source = None
    return source if isinstance(source, str) else "?"


# -- the executor ------------------------------------------------------------------------------
EXECUTOR_ENV = "AUTORESEARCH_EXECUTOR"  # module:function or file.py:function, executor.execute's signature


def load_executor():
    """The function that runs an experiment's spec: executor.execute (sandboxed, trusted evaluation),
    or the one AUTORESEARCH_EXECUTOR names (another backend, or the tests' stand-in)."""
    name = os.environ.get(EXECUTOR_ENV)
    if not name:
        return execute
    import importlib
    import importlib.util
    module, _, function = name.rpartition(":") if ":" in name else (name, "", "execute")
    try:
        if module.endswith(".py"):
            spec = importlib.util.spec_from_file_location(os.path.basename(module)[:-3], module)
            loaded = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(loaded)
        else:
            loaded = importlib.import_module(module)
        return getattr(loaded, function)
    except (ImportError, AttributeError, OSError) as e:
        raise RunError(f"{EXECUTOR_ENV}={name!r} cannot be loaded ({e}); unset it to use the sandboxed executor")


def executor_name():
    """What the ledger's `sandbox` column says about how the experiment runs."""
    if os.environ.get(EXECUTOR_ENV):
        return os.environ[EXECUTOR_ENV]
    problem = sandbox.bwrap_problem()
    return "bwrap" if problem is None else "none"


# -- processes and signals ---------------------------------------------------------------------
def _proc_stat(pid):
    """(state, process group) of a process from /proc/<pid>/stat; None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return fields[0], int(fields[2])


def _proc_cwd(pid):
    try:
        return os.path.realpath(os.readlink(f"/proc/{pid}/cwd"))
    except OSError:
        return None


def _is_train_py(argv):
    return any(os.path.basename(arg) == "train.py" for arg in argv)


def _group_members(pgid):
    """Live processes (zombies left out) of process group pgid, from /proc."""
    members = []
    for name in os.listdir("/proc"):
        stat = name.isdigit() and _proc_stat(name)
        if stat and stat[1] == pgid and stat[0] != "Z":
            members.append(int(name))
    return members


def left_behind_training(pgid, checkout):
    """The processes of group pgid if it is still a training of checkout whose runner died, else [].

    A pid can be reused by an unrelated process once the training is gone, so the group has to prove
    it is ours. With /proc (Linux): the leader, if alive, must be the leader of group pgid, run
    train.py and work in the checkout; with the leader gone, every process of the group must work in
    the checkout. Without /proc: `ps` must show the leader of group pgid running train.py. When nothing
    can tell, nothing is killed."""
    checkout = os.path.realpath(checkout)
    if os.path.isdir("/proc/self"):
        members = _group_members(pgid)
        if not members:
            return []
        if pgid in members:
            try:
                with open(f"/proc/{pgid}/cmdline", "rb") as f:
                    argv = [a.decode("utf-8", "replace") for a in f.read().split(b"\0")]
            except OSError:
                return []
            return members if _is_train_py(argv) and _proc_cwd(pgid) == checkout else []
        return members if all(_proc_cwd(pid) == checkout for pid in members) else []
    try:
        proc = subprocess.run(["ps", "-o", "pgid=,command=", "-p", str(pgid)], capture_output=True, text=True)
    except OSError:
        return []
    fields = proc.stdout.split()
    if proc.returncode != 0 or not fields or fields[0] != str(pgid) or not _is_train_py(fields[1:]):
        return []
    return [pgid]


def stop_left_behind_training(pgid, checkout, grace=None):
    """SIGTERM, then SIGKILL after the grace period, the training left behind in group pgid (see
    left_behind_training); returns the pids it found (empty: nothing of ours was running)."""
    grace = KILL_GRACE if grace is None else grace
    found = left_behind_training(pgid, checkout)
    if not found:
        return []
    if os.path.isdir("/proc/self"):
        alive = lambda: bool(_group_members(pgid))
    else:
        alive = lambda: _signal_group(pgid, 0)
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, KILL_GRACE)):
        if not _signal_group(pgid, sig):
            break
        deadline = time.time() + wait
        while alive() and time.time() < deadline:
            time.sleep(0.1)
        if not alive():
            break
    return found


def _signal_group(pgid, sig):
    """os.killpg; False when the group is gone (or not ours to signal)."""
    try:
        os.killpg(pgid, sig)
        return True
    except (ProcessLookupError, PermissionError):
        return False


class _Signals:
    """SIGINT/SIGTERM during an experiment: raised as Interrupted while armed, else held back."""

    def __init__(self):
        self.pending = None
        self.armed = False
        self.previous = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum, frame):
        self.pending = signal.Signals(signum).name
        if self.armed:
            self.armed = False
            raise Interrupted(f"interrupted by {self.pending}")

    def arm(self):
        if self.pending:
            raise Interrupted(f"interrupted by {self.pending}")
        self.armed = True

    def hold(self):
        self.armed = False


def checkout_lock(checkout):
    """One experiment at a time per checkout (an `autoresearch run`'s, a loop's or a swarm's)."""
    return gitutil.CheckoutLock(checkout, "autoresearch-run.lock", lambda pid: RunError(
        f"an experiment (pid {pid}: `autoresearch run`, `loop` or `swarm`) is running in this checkout; wait "
        f"for it to finish, or use another worktree (`git worktree add`)"))


# -- git moves ---------------------------------------------------------------------------------
def start_point(checkout, ledger, tag, base):
    """Newest commit on HEAD's first-parent line that is the campaign base or a `keep` of the campaign."""
    settled = {r["commit_sha"] for r in ledger.experiments(tag=tag, status="keep")} | {base}
    for sha in gitutil.first_parent_history(checkout):
        if sha in settled:
            return sha
    return gitutil.head(checkout)


def revert(checkout, tag, commit, start):
    """Save commit under refs/autoresearch/<tag>/ and reset the checkout to start."""
    if commit and commit != start:
        gitutil.update_ref(checkout, discarded_ref(tag, commit), commit)
    gitutil.reset_hard(checkout, start)


def recover(repo, ledger=None):
    """Record rows left `running` in this checkout by a runner that died as crash; reset the tree.
    Call only while no experiment runs in the checkout (run_experiment calls it under its lock)."""
    checkout = gitutil.toplevel(repo)
    ledger = ledger or Ledger(repo=checkout)
    recovered = []
    for row in ledger.experiments(status="running"):
        if row["worktree"] != checkout:
            continue
        cause = "interrupted: the runner stopped before the experiment finished"
        # its training may still be running (its own process group outlives the runner): stop it
        # before it competes with the next run or writes into the checkout after the reset
        if row.get("pgid") and row.get("host") == socket.gethostname():
            stopped = stop_left_behind_training(row["pgid"], row.get("workdir") or checkout)
            if stopped:
                cause += f" (its training, process group {row['pgid']}, was still running and was stopped)"
        ledger.finish_experiment(row["id"], status="crash", cause=cause)
        # back to the start point, unless someone has edited the checkout since (then the commit
        # simply becomes part of the next experiment)
        if row["commit_sha"] and row["parent_commit"] and gitutil.head(checkout) == row["commit_sha"] \
                and not gitutil.dirty_paths(checkout):
            revert(checkout, row["tag"], row["commit_sha"], row["parent_commit"])
        row = ledger.experiment(row["id"])
        ledger.event(row["tag"], "recovered", f"#{row['id']} was left running; recorded as crash", row["worker"])
        recovered.append(row)
    if recovered and (gitutil.current_branch(checkout) or "").startswith(BRANCH_PREFIX):
        results.write(checkout, ledger, campaign_tag(checkout))
    return recovered


def settle(repo, exp_id, keep, cause=None, ledger=None):
    """Finish an experiment run with decide=False: keep it (branch stays) or discard it (branch reset
    to its parent, commit saved under refs/autoresearch/). Updates the ledger and results.tsv."""
    checkout = gitutil.toplevel(repo)
    ledger = ledger or Ledger(repo=checkout)
    row = ledger.experiment(exp_id)
    if row is None:
        raise RunError(f"no experiment #{exp_id} in the ledger")
    status = "keep" if keep else ("discard" if row["status"] in ("keep", "discard") else row["status"])
    if not keep and row["commit_sha"] != row["parent_commit"]:
        head = gitutil.head(checkout)
        if head == row["commit_sha"]:
            revert(checkout, row["tag"], row["commit_sha"], row["parent_commit"])
        elif head != row["parent_commit"]:  # (an invalid run is reverted already)
            raise RunError(f"cannot discard #{exp_id}: the checkout is not on its commit "
                           f"{gitutil.short(row['commit_sha'])} any more")
    ledger.update_experiment(exp_id, status=status, **({"cause": cause} if cause else {}))
    row = ledger.experiment(exp_id)
    results.write(checkout, ledger, row["tag"])
    return row


# -- one experiment ----------------------------------------------------------------------------
PROGRESS_EVERY = 10.0  # seconds between progress lines when stderr is not a terminal (a log file, a pipe)
PROGRESS_WIDTH = 100


class _Progress:
    """The running experiment's latest log line on stderr, after its elapsed time and timeout. On a
    terminal: one line rewritten in place, cut to the terminal's width. Elsewhere: a plain line every
    PROGRESS_EVERY seconds, so a log of the loop stays readable with `tail`."""

    def __init__(self, log_path, timeout):
        self.log_path, self.timeout = log_path, timeout
        self.live = sys.stderr.isatty()
        self.written = time.time()  # the start line was just printed
        self.open_line = False

    def latest(self):
        end = file_end(self.log_path, 4096)
        if end is None:
            return "starting"
        lines = _lines(end.decode("utf-8", "replace"))
        if not lines:
            return "starting"
        steps = [line for line in lines if line.startswith("step ")]
        latest = steps[-1] if steps else lines[-1]  # the training's progress, not the summary after it
        # train.py's output is untrusted: no escape sequence reaches the terminal
        return "".join(c for c in latest.strip() if c.isprintable())

    def tick(self, since):
        now = time.time()
        if not self.live and now - self.written < PROGRESS_EVERY:
            return
        self.written = now
        text = f"[{now - since:4.0f}s/{self.timeout:.0f}s] {self.latest()}"
        # a terminal's last column would wrap the line on some terminals; a log file gets 100 columns
        text = text[:shutil.get_terminal_size().columns - 1 if self.live else PROGRESS_WIDTH]
        self.write(f"\r{text}\x1b[K" if self.live else text + "\n")
        self.open_line = self.live

    def end(self):
        if self.open_line:
            self.write("\n")
            self.open_line = False

    def write(self, text):
        try:
            sys.stderr.write(text)
            sys.stderr.flush()
        except (OSError, ValueError):  # stderr went away (`2>&1 | head`): the experiment goes on
            self.live, self.written = False, float("inf")


def run_experiment(repo, description, *, timeout=None, proposer="manual", model=None, prompt_tokens=None,
                   completion_tokens=None, cost_usd=None, seed=None, worker=None, threshold=None,
                   is_baseline=None, decide=True, progress=False, ledger=None, retry_of=None, time_budget=None):
    """Run one experiment in the checkout holding repo; returns its finished ledger row (a dict).

    RunError for user mistakes (nothing recorded); Interrupted after recording when a signal came.
    progress=True prints a start line and, on a terminal, the live progress line. time_budget: seconds
    of training instead of the profile's (a screening run: its val_bpb compares with no full run)."""
    if not description or not description.strip():
        raise RunError('a description is required: autoresearch run -m "what this experiment changes"')
    tag = campaign_tag(repo)
    checkout = gitutil.toplevel(repo)
    ledger = ledger or Ledger(repo=checkout)
    worker = worker or os.environ.get("AUTORESEARCH_WORKER") or socket.gethostname()
    with checkout_lock(checkout), _Signals() as signals:
        recover(checkout, ledger)
        experiment = _Experiment(checkout, ledger, tag, description.strip(), worker, signals, progress)
        return experiment.run(timeout=timeout, seed=seed, threshold=threshold, is_baseline=is_baseline,
                              decide=decide, time_budget=time_budget, ledger_cols=dict(
                                  proposer=proposer, model=model, prompt_tokens=prompt_tokens,
                                  completion_tokens=completion_tokens, cost_usd=cost_usd, retry_of=retry_of))


class _Experiment:
    def __init__(self, checkout, ledger, tag, description, worker, signals, progress):
        self.checkout, self.ledger, self.tag = checkout, ledger, tag
        self.description, self.worker, self.signals, self.progress = description, worker, signals, progress
        self.branch = BRANCH_PREFIX + tag

    def say(self, text):
        if self.progress:
            try:
                print(text, flush=True)
            except BrokenPipeError:  # `autoresearch run | head -1`: the experiment goes on, unheard
                cli.quiet_stdout()

    def run(self, timeout, seed, threshold, is_baseline, decide, ledger_cols, time_budget=None):
        checkout, ledger, tag = self.checkout, self.ledger, self.tag
        # 1. checks (Ctrl-C simply stops here; nothing changes but fixed files an index flag hid)
        self.signals.arm()
        campaign = ledger.campaign(tag) or {}
        base = campaign.get("base_commit") or gitutil.head(checkout)
        if ledger_cols["proposer"] == "manual":  # a person's or an agent's checkout: left as it is if refused
            dirty = gitutil.dirty_paths(checkout)
            self.check_uncommitted(dirty)
            self.check_history(base, pending="train.py" in dirty)
        rules, fingerprint, cause = self.check_integrity(campaign, base)
        if time_budget is not None and rules:
            rules = dict(rules, time_budget=float(time_budget))
        self.signals.hold()

        # 2. campaign, commit, ledger row: held signals wait until these agree
        known = dict(branch=self.branch, base_commit=base, profile=rules.get("profile"), fingerprint=fingerprint,
                     proposer=ledger_cols["proposer"], model=ledger_cols["model"])
        missing = {k: v for k, v in known.items() if v is not None and campaign.get(k) is None}
        if missing:  # a new campaign, or one the loop created with its settings only
            ledger.save_campaign(tag=tag, **missing)
            if not campaign.get("base_commit"):
                ledger.event(tag, "campaign", f"campaign {tag} starts at {gitutil.short(base)}", self.worker)
        campaign = ledger.campaign(tag)
        self.rules = rules
        start = start_point(checkout, ledger, tag, base)
        gitutil.stage_all(checkout)
        commit = gitutil.commit(checkout, self.description) if gitutil.has_staged_changes(checkout) \
            else gitutil.head(checkout)
        cols = dict(tag=tag, worker=self.worker, branch=self.branch, worktree=checkout, parent_commit=start,
                    commit_sha=commit, diff=gitutil.diff(checkout, start, commit), description=self.description,
                    profile=rules.get("profile"), time_budget=rules.get("time_budget"), seed=seed,
                    host=socket.gethostname(), **ledger_cols)
        if cause:
            return self.record_invalid(cols, cause, commit, start)

        best = ledger.reference(tag)
        if threshold is None:
            threshold = threshold_of(campaign)
        if is_baseline is None:
            is_baseline = best is None
        repeat_of = None if is_baseline or not same_train_py(checkout, commit, start) else start
        if timeout is None:
            timeout = 2 * float(rules["time_budget"]) + TIMEOUT_MARGIN
        log_path = os.path.join(checkout, "run.log")

        # 3. train, from the experiment's spec, in the sandbox; the harness measures and evaluates
        try:
            train_py = gitutil.show_bytes(checkout, f"{commit}:train.py").decode("utf-8", "replace")
        except gitutil.GitError:
            return self.record_invalid(cols, "train.py was deleted", commit, start)
        spec = sandbox.Spec(train_py=train_py, base_commit=base, profile=rules["profile"], seed=seed,
                            time_budget=time_budget)
        state = self.harness_state(commit)
        exp_id = ledger.start_experiment(**cols, log_path=log_path, timeout_s=timeout, best_before=best,
                                         threshold=threshold, is_baseline=int(bool(is_baseline)),
                                         sandbox=executor_name())
        self.say(f"experiment #{exp_id} on {self.branch} at {gitutil.short(commit)}: {self.description}"
                 + (f" (train.py as kept at {gitutil.short(repeat_of)}: a repeat, never kept)" if repeat_of else "")
                 + "\n"
                 f"training (profile {rules['profile']}, budget {rules['time_budget']:g} s, timeout {timeout:g} s), "
                 f"log: {log_path}")

        def started(pgid, folder):  # signals wait until the row names the training's process group
            ledger.update_experiment(exp_id, pgid=pgid, workdir=folder)
            self.signals.arm()

        progress = _Progress(log_path, timeout) if self.progress else None

        def tick(since):
            if progress:
                progress.tick(since)

        caches = compile_caches(ledger, tag)
        caches.trim_evaluator_cache()
        workspace, adopt, outcome, row = caches.workspace(), False, None, None
        try:
            try:
                outcome = load_executor()(spec, checkout, rules["profile_dir"], float(rules["time_budget"]),
                                          log_path, timeout, started=started, tick=tick, compile_cache=workspace,
                                          eval_compile_cache=caches.evaluator_cache())
                self.signals.hold()
            except Interrupted as interrupt:
                self.signals.hold()  # the executor has stopped the training's process group
                if progress:
                    progress.end()
                row = self.finish(exp_id, commit, start, decide=True, outcome=None, state=state,
                                  cause=f"interrupted ({self.signals.pending or 'signal'})")
                raise Interrupted(str(interrupt), row=row) from None
            if progress:
                progress.end()

            # 4. decide and record; only the campaign's own train.py leaves a compile cache for later runs
            row = self.finish(exp_id, commit, start, decide=decide, outcome=outcome, state=state, cause=None,
                              fingerprint=fingerprint, threshold=threshold, best=best, is_baseline=is_baseline,
                              repeat_of=repeat_of)
            adopt = adopts_compile_cache(checkout, spec, row["status"])
        finally:
            adopted = caches.settle(workspace, adopt)
            compilecache.settle_program(outcome and outcome.program, kept=bool(row) and row["status"] == "keep")
        if adopted:
            ledger.event(tag, "compile-cache", f"#{exp_id}: {adopted}", self.worker)
        if self.signals.pending:
            raise Interrupted(f"interrupted by {self.signals.pending}", row=row)
        return row

    def check_history(self, base, pending):
        """RunError (an event in the ledger, nothing changed) when the branch is not where the campaign
        left it, as a person who also keeps and resets by hand may leave it: its last keep reset away
        (the run would be judged against a best the branch no longer holds), or commits no experiment
        recorded since the best (the run would take them in under its own description, and a discard
        would reset them away). pending: whether train.py has changes the run is to commit."""
        keeps = [r["commit_sha"] for r in self.ledger.experiments(tag=self.tag, status="keep") if r["commit_sha"]]
        history = gitutil.first_parent_history(self.checkout)
        problem = None
        if keeps and keeps[-1] not in history:
            last = keeps[-1]
            problem = (f"the campaign's last kept commit {gitutil.short(last)} is not on this branch (reset by "
                       f"hand?): go back to it (`git reset --hard {gitutil.short(last)}`) or start another campaign")
        else:
            start = start_point(self.checkout, self.ledger, self.tag, base)
            beyond = history[:history.index(start)] if start in history else []
            if len(beyond) + pending > 1:
                problem = (f"{len(beyond)} commit(s) since the campaign's best {gitutil.short(start)} that no "
                           f"experiment recorded ({', '.join(gitutil.short(sha) for sha in beyond[:3])}), and one "
                           f"experiment is one change: run them one at a time, or squash them "
                           f"(`git reset --soft {gitutil.short(start)}`)")
        if problem:
            self.ledger.event(self.tag, "refused", problem, self.worker)
            raise RunError(problem)

    def check_uncommitted(self, dirty):
        """RunError (an event in the ledger, nothing committed, moved or removed) when the checkout holds
        uncommitted changes other than train.py: `autoresearch run` commits everything it runs, and an
        experiment may change train.py only. (A loop's proposers are checked by the loop; what is
        committed already is judged by check_integrity, and recorded invalid.) dirty: gitutil.dirty_paths."""
        others = sorted(set(dirty) - {"train.py"})
        if not others:
            return
        untracked = set(gitutil.untracked_paths(self.checkout))
        listed = ", ".join(p + (" (untracked)" if p in untracked else " (modified)") for p in others[:5])
        listed += f" and {len(others) - 5} more" if len(others) > 5 else ""
        self.ledger.event(self.tag, "refused", f"uncommitted changes other than train.py: {listed}", self.worker)
        raise RunError(f"uncommitted changes other than train.py: {listed}; an experiment changes train.py only: "
                       f"restore them (git checkout -- FILE), move them away, or list them in .git/info/exclude")

    def check_integrity(self, campaign, base):
        """(rules, data fingerprint, cause): cause None when only train.py differs from the campaign's base
        and the rules and data are the campaign's. Fixed files hidden behind git index flags are put back."""
        checkout = self.checkout
        changed = gitutil.git(checkout, "diff", "--name-only", "--no-renames", base, "--", ".",
                              *gitutil.EXCLUDES).splitlines()
        outside = sorted(set(changed + gitutil.untracked_paths(checkout)) - {"train.py"})
        if outside:
            return {}, None, "changed files other than train.py: " + ", ".join(outside)
        flagged = gitutil.flagged_paths(checkout)
        problems = sandbox.fixed_file_problems(checkout, base)
        if flagged or problems:
            cause = "; ".join(problems)
            if flagged:
                cause = ("git index flags (skip-worktree / assume-unchanged) hide changes to: " + ", ".join(flagged)
                         + (f" ({cause})" if cause else ""))
                gitutil.clear_flags(checkout, flagged)
            sandbox.restore_fixed_files(checkout, base)  # the campaign goes on with the rules it started with
            return {}, None, cause
        rules = read_rules(checkout)
        fingerprint = data_fingerprint(rules["profile"], rules["profile_dir"])
        check_campaign_data(campaign, rules, fingerprint)
        return rules, fingerprint, None

    def harness_state(self, commit):
        """What the harness wrote and expects to find unchanged after the run: HEAD, the saved refs."""
        return dict(head=commit, refs=gitutil.refs(self.checkout, f"refs/autoresearch/{self.tag}/"))

    def tampering(self, state):
        """How the run changed the harness's git state (None when it did not)."""
        if gitutil.head(self.checkout) != state["head"]:
            return "the run moved HEAD"
        refs = gitutil.refs(self.checkout, f"refs/autoresearch/{self.tag}/")
        if any(refs.get(name) != sha for name, sha in state["refs"].items()):
            return "the run changed or deleted refs under refs/autoresearch/"
        flagged = gitutil.flagged_paths(self.checkout)
        if flagged:
            gitutil.clear_flags(self.checkout, flagged)
            return "the run set git index flags that hide changes: " + ", ".join(flagged)
        return None

    def fingerprint_now(self):
        try:
            return data_fingerprint(self.rules["profile"], self.rules["profile_dir"])
        except RunError:  # the run deleted it
            return None

    def read_log(self):
        return (file_end(os.path.join(self.checkout, "run.log"), 4 << 20) or b"").decode("utf-8", "replace")

    def finish(self, exp_id, commit, start, decide, outcome, state, cause, fingerprint=None, threshold=0.0,
               best=None, is_baseline=False, repeat_of=None):
        """Work out the status, move the branch, finish the ledger row and append results.tsv.
        outcome None: the run was interrupted (status crash, with the cause given). repeat_of: the commit
        whose train.py this run's is (a repeat is never kept: a lucky draw is not a change)."""
        checkout, tag = self.checkout, self.tag
        text = self.read_log()
        if outcome is None:
            status = "crash"
        else:
            status, cause = self.judge(outcome, state, fingerprint, claims(text), text)
            if status == "keep":  # judged on its trusted val_bpb
                val = outcome.val_bpb
                status = "keep" if is_baseline or best is None or val < best - threshold else "discard"
            elif status == "discard" and is_baseline:  # judged, never a gain: the campaign's own train.py
                status, cause = "keep", None             # sets the bar (its starved flag says how it ran)
            if status == "keep" and repeat_of:
                status, cause = "discard", repeat_cause(repeat_of)
        if status == "invalid" or (decide and status != "keep"):
            revert(checkout, tag, commit, start)
        cols = result_columns(outcome, text, status, seed=self.ledger.experiment(exp_id)["seed"])
        cols["log_path"] = archive_log(self.ledger, tag, exp_id, os.path.join(checkout, "run.log"))
        return record_finish(self.ledger, checkout, exp_id, status, cause, cols)

    def judge(self, outcome, state, fingerprint, claimed, text):
        """(status, cause) of a finished run; "keep" stands for "judged on its trusted val_bpb"."""
        touched = gitutil.dirty_paths(self.checkout)
        if touched:
            gitutil.remove_untracked(self.checkout, gitutil.untracked_paths(self.checkout))
            return "invalid", "the run changed files in the checkout: " + ", ".join(sorted(touched))
        if fingerprint and self.fingerprint_now() != fingerprint:
            return "invalid", "the run changed the data cache"
        tampered = self.tampering(state)
        if tampered:
            return "invalid", tampered
        return judge_outcome(outcome, claimed, text, self.rules["time_budget"])

    def record_invalid(self, cols, cause, commit, start):
        now = time.time()
        exp_id = self.ledger.start_experiment(**cols, status="invalid", cause=cause, started_at=now, ended_at=now)
        revert(self.checkout, self.tag, commit, start)
        row = self.ledger.experiment(exp_id)
        results.write(self.checkout, self.ledger, self.tag)
        self.ledger.event(self.tag, "invalid", f"#{exp_id} {gitutil.short(commit)} invalid: {cause}", self.worker)
        if self.signals.pending:
            raise Interrupted(f"interrupted by {self.signals.pending}", row=row)
        return row


def same_train_py(checkout, commit, start):
    """Whether commit's train.py is start's: a run of it is a repeat, never kept (a lucky draw is no change)."""
    try:
        return gitutil.show_bytes(checkout, f"{commit}:train.py") == gitutil.show_bytes(checkout, f"{start}:train.py")
    except gitutil.GitError:  # train.py deleted: judged as such
        return False


def repeat_cause(start):
    return f"a repeat of {gitutil.short(start)}'s train.py: never kept, it measures the noise"


STARVED_PAST_BUDGET = "starved past its budget"  # how the cause of a run judged but never kept begins


def starved_past_budget(row):
    """Whether the run trained past its budget while starved: judged, never kept (a loop runs a would-be
    keep again, as any starved one; a campaign's baseline sets the bar regardless)."""
    return (row.get("cause") or "").startswith(STARVED_PAST_BUDGET)


def judge_outcome(outcome, claimed, text, time_budget):
    """(status, cause) of a run from what the executor measured (outcome) and what train.py printed
    (claimed: its summary's numbers; text: its log); "keep" stands for "judged on its trusted val_bpb",
    "discard" for judged but never kept (a starved run that trained past its budget).
    Every executor's result goes through here, wherever it ran."""
    if outcome.stopped == "cancelled":
        return "crash", "interrupted: the run was cancelled"
    if outcome.stopped == "timeout":
        return "timeout", f"timeout: killed after {outcome.timeout_s:g} s"
    if outcome.stopped == "export":
        return "timeout", f"the model's export took longer than {EXPORT_ALLOWANCE:g} s"
    if outcome.stopped == "writes":
        size, files, lost = outcome.written or (0, 0, 0)
        return "invalid", (f"wrote {size / 2**30:.1f} GiB in {files} files to the host's disk (log, hand-off, "
                           f"compile cache; the disk lost {lost / 2**30:.1f} GiB meanwhile): past the limit of "
                           f"{executor.WRITE_LIMIT / 2**30:g} GiB or {executor.FILE_LIMIT} files")
    if outcome.stopped == "budget":
        return "timeout", (f"over budget: still training {outcome.wall_s:.0f} s after its launch (budget "
                           f"{time_budget:g} s + {outcome.grace_s:.0f} s grace from its first batch)")
    if (outcome.gpus_held or 0) > 1:
        return "invalid", f"its processes held {outcome.gpus_held} GPUs at once: an experiment has one"
    printed = claimed.get("val_bpb")
    if outcome.returncode != 0:
        return "crash", crash_cause(text, outcome.returncode)
    if not outcome.handed_over:
        if printed is None:
            return "crash", crash_cause(text, outcome.returncode)
        return "invalid", (f"printed val_bpb {printed} but handed no model to the trusted evaluator "
                           f"(prepare.evaluate_bpb was not used)")
    if outcome.eval_error:
        return "invalid", f"the trusted evaluation refused the model: {outcome.eval_error}"
    if not isinstance(outcome.val_bpb, (int, float)) or not math.isfinite(outcome.val_bpb):
        return "crash", f"val_bpb is {outcome.val_bpb}"
    if printed is None:
        return "crash", crash_cause(text, outcome.returncode)
    if abs(printed - outcome.val_bpb) > PRINTED_TOLERANCE:
        return "invalid", (f"printed val_bpb {printed:.6f} disagrees with the trusted evaluation "
                           f"{outcome.val_bpb:.6f}")
    said = claimed.get("training_seconds")
    measured = outcome.training_s
    if not isinstance(said, (int, float)):  # then nothing would compare its training with the budget
        return "invalid", ("printed no training_seconds line: the harness checks the training time a run "
                           "says it had against the budget and its own clock")
    last_step = contention.stretch(max(LAST_STEP, LAST_STEP_SHARE * time_budget), outcome.cpu_share_others)
    starved = contention.starved(outcome.cpu_share_others, outcome.gpu_others)
    past_budget = said > time_budget + last_step
    if past_budget and not starved:
        return "invalid", f"trained {said:g} s by its own count: past the budget of {time_budget:g} s"
    if measured is not None:
        if said > measured + CLAIM_TOLERANCE:
            return "invalid", f"claims {said:g} s of training; the harness measured {measured:.1f} s"
        slack = contention.stretch(outcome.slack_s, outcome.cpu_share_others)
        if measured - said > slack:
            return "invalid", (f"trained {measured:.1f} s as the harness measured, but claims {said:g} s "
                               f"(more than {slack:.1f} s apart)")
    if outcome.handoff_s is not None:  # training hidden in the start-up, between steps or in the export
        outside = contention.stretch(outcome.outside_s, outcome.cpu_share_others)
        if outcome.handoff_s - said > outside:
            parts = [(name, value) for name, value in (("start-up", outcome.startup_s), ("training", measured),
                                                         ("export", outcome.export_s)) if value is not None]
            where = ", ".join(f"{name} {value:.1f} s" for name, value in parts)
            return "invalid", (f"handed its model over {outcome.handoff_s:.1f} s after launch for {said:g} s of "
                               f"training by its own count: more than {outside:.1f} s outside training "
                               f"(start-up, untimed first steps, export{'; measured: ' + where if where else ''})")
    if past_budget:  # starved, one step can take any time: judged, but more training never wins a keep
        others = contention.describe(dict(cpu_share_others=outcome.cpu_share_others, gpu_others=outcome.gpu_others))
        return "discard", (f"{STARVED_PAST_BUDGET}: trained {said:g} s by its own count, the budget is "
                           f"{time_budget:g} s ({others}); not kept, re-run it on a quieter machine")
    return "keep", None


def outcome_metrics(outcome, claimed):
    """The ledger columns of a judged run: what train.py claimed (val_bpb excepted) and what the
    harness measured."""
    metrics = {k: v for k, v in claimed.items() if k != "val_bpb"}
    metrics.update(val_bpb=outcome.val_bpb, claimed_val_bpb=claimed.get("val_bpb"),
                   measured_training_s=outcome.training_s, startup_s=outcome.startup_s, eval_s=outcome.eval_s,
                   eval_ahead=int(outcome.eval_ahead) if outcome.handed_over else None,
                   cpu_share_others=outcome.cpu_share_others, gpu_others=outcome.gpu_others,
                   starved=None if outcome.cpu_share_others is None and outcome.gpu_others is None
                   else int(contention.starved(outcome.cpu_share_others, outcome.gpu_others)))
    return metrics


def result_columns(outcome, text, status, seed=None):
    """The ledger columns of a finished run from its log and, unless it was interrupted (outcome None),
    the executor's outcome; val_bpb only for a judged run (keep or discard). seed: the one the harness
    gave the run (the summary's is only taken when it gave none: train.py's default)."""
    summary = parse_summary(text)
    claimed = claims(text)
    cols = outcome_metrics(outcome, claimed) if outcome is not None else \
        {k: v for k, v in claimed.items() if k != "val_bpb"}
    if status not in ("keep", "discard"):
        cols["val_bpb"] = None  # only a judged run has a metric to compare
    device = summary.get("device_name") or summary.get("device")
    cols.update(log_tail=log_tail(text), device=str(device)[:100] if device is not None else None)
    if seed is None and isinstance(summary.get("seed"), int) and 0 <= summary["seed"] < 2**31:
        cols["seed"] = summary["seed"]
    return cols


MAX_CLAIM = 1e15  # a claimed number beyond this (or not finite) is dropped: SQLite's integers end at 2**63


def _plausible(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) \
        and abs(value) < MAX_CLAIM


def record_finish(ledger, checkout, exp_id, status, cause, cols):
    """Finish an experiment's ledger row, rewrite the campaign's results.tsv, log the event; the row."""
    ledger.finish_experiment(exp_id, status=status, cause=cause, **cols)
    row = ledger.experiment(exp_id)
    results.write(checkout, ledger, row["tag"])
    val = row["val_bpb"]
    ledger.event(row["tag"], status, f"#{exp_id} {gitutil.short(row['commit_sha'])} {status}"
                 + (f" val_bpb {val:.6f}" if val is not None else "") + f": {row['description']}", row["worker"])
    return row


def claims(text):
    """The numbers of train.py's summary block (its claims: the harness measures its own). A hostile
    train.py prints what it likes: only finite numbers of a sane size are kept."""
    summary = parse_summary(text)
    return {k: summary[k] for k in SUMMARY_COLUMNS if _plausible(summary.get(k))}


# -- autoresearch run --------------------------------------------------------------------------
def summary_text(row, ledger):
    """Two short lines for a human: what happened and where the branch is."""
    best = ledger.reference(row["tag"])  # the best as status and report say it: what a change must beat
    parts = [f"{row['status']}", f"#{row['id']}", f"commit {gitutil.short(row['commit_sha'])}"]
    if row["val_bpb"] is not None:
        parts.append(f"val_bpb {row['val_bpb']:.6f}")
        if row["best_before"] is not None:
            parts.append(f"delta {row['val_bpb'] - row['best_before']:+.6f} vs reference {row['best_before']:.6f} "
                         f"(threshold {row['threshold'] or 0:g})")
    if row.get("num_steps") is not None:
        parts.append(f"trained {row['num_steps']} steps" + (
            f" at {row['tokens_per_second']:,.0f} tokens/s" if row.get("tokens_per_second") else ""))
    if row.get("starved"):
        parts.append(f"STARVED ({contention.describe(row)}: re-run it on a quieter machine)")
    if row["cause"]:
        parts.append(f"cause: {row['cause']}")
    line = "  ".join(parts)
    if row["status"] == "keep":
        where = f"branch {row['branch']} stays at {gitutil.short(row['commit_sha'])}"
    elif row["commit_sha"] != row["parent_commit"]:
        where = (f"branch {row['branch']} reset to {gitutil.short(row['parent_commit'])}; the experiment is "
                 f"kept as {discarded_ref(row['tag'], row['commit_sha'])}")
    else:
        where = f"branch {row['branch']} unchanged"
    best_text = f"best {best:.6f}" if best is not None else "no best yet"
    return f"{line}\n{where}; campaign {row['tag']}: {best_text}"


def cmd_run(args):
    ledger = None
    try:
        if gitutil.is_repo("."):
            campaign_tag(".")
            ledger = Ledger(repo=".")
        row = run_experiment(".", args.message, timeout=args.timeout, seed=args.seed, threshold=args.threshold,
                             progress=True, ledger=ledger)
    except RunError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except gitutil.GitError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except Interrupted as e:
        if e.row is not None:
            print(summary_text(e.row, ledger), file=sys.stderr)
        print(f"stopped: {e}", file=sys.stderr)
        return 143 if "SIGTERM" in str(e) else 130
    print(summary_text(row, ledger))
    return 0 if row["status"] in ("keep", "discard") else 1  # cli.EXIT_CODES: the experiment failed


def register(subparsers):
    p = subparsers.add_parser(
        "run", help="run one experiment (commit train.py, train, decide, record)",
        description="Run one experiment in this checkout, on branch autoresearch/<tag>: commit train.py, "
                    "run it with all output to run.log, keep or discard it, and record it in the ledger "
                    "and results.tsv.")
    p.add_argument("-m", "--message", required=True, metavar="DESC", help="what this experiment changes")
    p.add_argument("--timeout", type=cli.positive(float, "number of seconds"), metavar="S",
                   help="kill the run after S seconds (default: 2 x the profile's TIME_BUDGET + 120)")
    p.add_argument("--seed", type=int, metavar="N", help="random seed (env AUTORESEARCH_SEED; default 42)")
    p.add_argument("--threshold", type=float, metavar="D",
                   help="keep only if val_bpb < best - D (default: the campaign's max(min_delta, 2 x noise std), "
                        "else 0); a negative D keeps a result up to -D worse (a simplification worth having)")
    p.set_defaults(func=cmd_run)
