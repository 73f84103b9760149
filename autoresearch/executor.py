"""
Execute one experiment from its spec and judge nothing: train, hand over, evaluate, measure.

    outcome = execute(spec, repo, profile_dir, time_budget, log_path, timeout)

Inputs are the spec (train.py text, base commit, profile, seed; see sandbox.py); outputs are the
log file and an Outcome record. Nothing here reads or writes git state, the ledger or results.tsv:
the caller (runner.py, or a remote worker) does. The harness, not train.py, owns the numbers:
- the clock: start-up runs from launch to the first training batch (prepare.py tells the harness);
  training runs from there to the start of the model's export (prepare.py tells the harness; at most
  EXPORT_ALLOWANCE more until the hand-off). A run still training TIME_BUDGET + grace after its start
  (the first batch, or STARTUP_ALLOWANCE after launch at the latest) is stopped. The runner compares
  the training_seconds a run claims with both: the measured training may exceed the claim by the
  slack (the untimed first steps) only, and what lies outside the claim from launch to hand-off
  (start-up, untimed steps, export, however the run split them) by the outside allowance only;
- the metric: train.py's `evaluate_bpb` exports the model into the hand-off folder and asks the
  harness, which copies it out of the experiment's reach and runs the trusted evaluator on it
  (evaluator.py); the value goes back to train.py to print, and into the Outcome. The time the
  harness spends evaluating does not count against the experiment's timeout.
"""

import functools
import json
import os
import random
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from typing import NamedTuple

import psutil

from autoresearch import compilecache, contention, evaluator, gitutil, hostfiles, limits, sandbox

STARTUP_ALLOWANCE = 10.0      # seconds of start-up before the training clock starts regardless (+20 on GPU)
EXPORT_ALLOWANCE = 30.0       # seconds from the start of the export to the hand-off (a hung export is stopped)
EXPORT_EXPECTED = 5.0         # seconds of it an honest export needs: 1.5-3 s on the CPU VM, 4.6-5.1 s for
                              # the gpu profile's 199 MB on an H200 (+5 on GPU); training beyond counts
GPU_COMPILE_ALLOWANCE = 90.0  # on a CUDA machine torch.compile runs in the first (untimed) steps: 55-67 s
                              # cold on an H200 (measured); 9 s warm, but only a model the baseline's
                              # compile cache covers starts warm (compilecache.py)
KILL_GRACE = 5.0              # seconds between SIGTERM and SIGKILL
GPU_SAMPLE_S = 5.0            # on a machine of several GPUs: about how often the GPUs a run holds are looked at
# what a run may leave on the host's disk, in its log, its hand-off and its compile cache (the rest of
# what it can write is the sandbox's memory, sized there): a run past either is stopped, and invalid
WRITE_LIMIT = 16 << 30        # bytes (the exported model and a compile cache take a few hundred MB)
FILE_LIMIT = 100_000          # files and folders
# no file an experiment writes (its log included) grows past WRITE_LIMIT (limits.command), whatever
# the once-a-second check sees in between (fallocate, one huge write, a sparse model.pt2 to copy)


class Allowances(NamedTuple):
    """Seconds a run's timing may take (allowances()). startup: the start-up before the training clock
    starts regardless; slack: how far the claimed training time may fall short of the measured one (the
    untimed first steps, compilation); outside: how much of the time from launch to hand-off may lie
    outside the claimed training (start-up, slack and export together, however the run split them);
    grace: how long past its budget a training may run before it is stopped."""
    startup: float
    slack: float
    outside: float
    grace: float


def allowances(time_budget, gpu=None):
    """The Allowances of a run with this budget, on a GPU machine or not (by default: this machine)."""
    gpu = sandbox.has_gpu() if gpu is None else gpu
    startup = STARTUP_ALLOWANCE + (20.0 if gpu else 0.0)
    compile_time = GPU_COMPILE_ALLOWANCE if gpu else 0.0
    slack = 5.0 + 0.02 * time_budget + compile_time  # one untimed step on CPU: 0.5-2.7 s of 300 measured
    outside = startup + slack + EXPORT_EXPECTED + (5.0 if gpu else 0.0)
    grace = 20.0 + 0.10 * time_budget + compile_time  # a stop for what is surely over, judged or not
    return Allowances(startup, slack, outside, grace)


@dataclass
class Outcome:
    returncode: int = None
    stopped: str = None           # None, "timeout" (the whole run), "budget" (training past budget + grace),
                                  # "export" (the hand-off came too late), "writes" (past WRITE_LIMIT or
                                  # FILE_LIMIT on the host's disk) or "cancelled" (the caller's cancel)
    val_bpb: float = None         # the trusted evaluator's value
    eval_error: str = None        # why there is none although a model was handed over
    eval_ahead: bool = False      # whether the model ran on the program its evaluator compiled ahead
    program: str = None           # the evaluated program, stashed in the evaluator's cache until the run is
                                  # judged (compilecache.settle_program)
    handed_over: bool = False
    startup_s: float = None       # launch to the first training batch (the allowance, if it never said)
    training_s: float = None      # first training batch to the export, as the harness measured it
    handoff_s: float = None       # launch to the hand-off: start-up, training and export together
    eval_s: float = None
    export_s: float = None        # start of the export to the hand-off
    wall_s: float = None
    sandboxed: bool = False
    grace_s: float = 0.0          # see Allowances
    slack_s: float = 0.0
    outside_s: float = 0.0
    timeout_s: float = None
    cpu_share_others: float = None  # share of the CPUs other processes took during training (contention.py)
    gpu_others: int = None        # other processes on the experiment's GPU during training
    gpus_held: int = None         # the most GPUs the run's processes held at once (sampled; None: not looked)
    written: tuple = None         # when stopped = "writes": (bytes, files) in the folders it writes, and
                                  # the bytes its disks lost meanwhile


MAX_MESSAGES = 100            # messages an experiment may send (it needs three)
MAX_MESSAGE_CHARS = 1 << 16   # characters one may have


class _Channel(threading.Thread):
    """The harness's end of the socket train.py's prepare.py talks to: records the training start,
    takes the hand-off, runs the trusted evaluation and answers with its val_bpb. take(message) copies
    the model out of the run's reach: (path, None) or (None, what is wrong); evaluate(path, message)
    gives the evaluator's reply."""

    def __init__(self, sock, take, evaluate):
        super().__init__(daemon=True)
        self.sock, self.take, self.evaluate = sock, take, evaluate
        # handoff_at: the run asked; copied_at: the harness holds its copy of the model. The run trains on
        # meanwhile if it likes (and may rewrite what is not copied yet): the hand-off ends at copied_at.
        self.training_at = self.exporting_at = self.handoff_at = self.copied_at = self.evaluated_at = None
        self.stopped = False  # set when the harness stopped the run: a model it still hands over is not evaluated
        self.result = None
        self.events = []

    def run(self):
        stream = self.sock.makefile("rw", encoding="utf-8", errors="replace")
        try:
            while len(self.events) <= MAX_MESSAGES:  # a flood is not a conversation
                line = stream.readline(MAX_MESSAGE_CHARS)
                if not line.endswith("\n"):  # closed, or a line without end: its text would fill our memory
                    break
                try:
                    message = json.loads(line)
                    event = message.get("event") if isinstance(message, dict) else None
                except ValueError:
                    event = None
                self.events.append(event)
                if event == "training" and self.training_at is None:
                    self.training_at = time.time()
                elif event == "exporting" and self.exporting_at is None and self.handoff_at is None:
                    self.exporting_at = time.time()
                elif event == "model" and self.handoff_at is None:
                    self.handoff_at = time.time()
                    self.exporting_at = self.exporting_at or self.handoff_at
                    self.result = self._take_and_evaluate(message)
                    # what the run needs back, no more: how long its evaluation took would say which
                    # path the program took on the validation rows
                    said = {k: v for k, v in self.result.items() if k in ("val_bpb", "error")}
                    stream.write(json.dumps(said) + "\n")
                    stream.flush()
                elif event == "model":
                    stream.write(json.dumps({"error": "a model was handed over already"}) + "\n")
                    stream.flush()
        except (OSError, ValueError):
            pass  # the experiment closed its end
        finally:  # said so to the experiment: what it still sends fails at once, never blocks it
            try:
                self.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def _take_and_evaluate(self, message):
        try:
            model, error = self.take(message)
        except Exception as e:  # a model file it cannot read or copy: the run's fault, said
            model, error = None, f"the model could not be taken over ({type(e).__name__}: {e})"
        finally:
            self.copied_at = time.time()
        if self.stopped and not error:  # judged already (timeout, writes, cancelled): the evaluation is no use
            error = "the run was stopped before its model was evaluated"
        try:
            return {"error": error} if error else self.evaluate(model, message)
        except Exception as e:
            return {"error": f"the model could not be evaluated ({type(e).__name__}: {e})"}
        finally:  # the run's clock goes on again
            self.evaluated_at = time.time()


def execute(spec, repo, profile_dir, time_budget, log_path, timeout, started=None, tick=None, sandboxed=None,
            eval_timeout=None, placement=None, cancel=None, compile_cache=None, eval_compile_cache=None):
    """Run the experiment of spec; returns an Outcome. `started(pgid, folder)` is called once the
    training's process group exists, `tick(launched)` about once a second while it runs.
    KeyboardInterrupt (or any exception) kills the group first. sandboxed=None: when bubblewrap works.
    repo may be None when the spec carries its fixed files (Spec.shipped). placement: the GPU and CPU
    threads of a swarm's worker (sandbox.PLACEMENT_ENV); cancel: a threading.Event that stops the run
    (stopped = "cancelled") when set from another thread. compile_cache: the experiment's writable copy of
    its campaign's compile cache; eval_compile_cache: the trusted evaluator's (compilecache.py)."""
    outcome = Outcome(sandboxed=_sandboxed(sandboxed), timeout_s=timeout)
    eval_timeout = eval_timeout or max(600.0, timeout)
    startup_allowance, outcome.slack_s, outcome.outside_s, outcome.grace_s = allowances(time_budget)
    work = tempfile.mkdtemp(prefix="autoresearch-experiment-")
    folder, handoff, private = (os.path.join(work, name) for name in ("experiment", "handoff", "private"))
    for path in (handoff, private):
        os.makedirs(path)
    proc, ours, theirs, trusted, group = None, None, None, None, None
    try:
        sandbox.materialize(spec, repo, folder)
        os.chmod(folder, 0o555)

        # one set of control groups for the run and its evaluator, which runs the run's program on the run's
        # batch size: together within the run's share of the memory (a swarm's slot)
        group = _group(placement)
        trusted = evaluator.Evaluator(folder, private, spec.profile, os.path.dirname(profile_dir),
                                      outcome.sandboxed, placement, eval_compile_cache, group=group)

        def take(message):
            return take_over(message, handoff, private)

        def evaluate(model, message):
            return _evaluate(model, message, trusted, eval_timeout)

        ours, theirs = socket.socketpair()
        argv, env = sandbox.command(spec, folder, profile_dir, handoff, theirs.fileno(), outcome.sandboxed, placement,
                                    compile_cache, hidden=_harness_folders(repo, log_path))
        argv = limits.command(argv, group, WRITE_LIMIT)
        launched = time.time()
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(argv, cwd=folder, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    env=env, start_new_session=True, pass_fds=(theirs.fileno(),))
        theirs.close()
        channel = _Channel(ours, take, evaluate)
        channel.start()
        if started:
            started(proc.pid, folder)
        clock = _Clock(launched, startup_allowance, time_budget, timeout)
        writable = [log_path, handoff] + ([compile_cache] if compile_cache else [])
        watched = _Watched(gpu=(placement or {}).get("CUDA_VISIBLE_DEVICES"),
                           runs=limits.all_runs() if group is not None else None,
                           members=group.members if group is not None else lambda: _process_tree(proc.pid))
        with _IN_FLIGHT:
            _supervise(proc, channel, outcome, clock, watched, writable,
                       (work, os.path.dirname(os.path.abspath(log_path))), tick, cancel)
        channel.stopped = outcome.stopped is not None
        kill_group(proc, grace=KILL_GRACE if outcome.stopped not in (None, "writes") else 0)
        ours.shutdown(socket.SHUT_RDWR)
        # a cancelled run does not wait for an evaluation in progress (the evaluator is stopped below)
        channel.join(timeout=1 if outcome.stopped == "cancelled" else eval_timeout + 10)
        outcome.returncode = proc.returncode
        outcome.wall_s = time.time() - launched
        _read_timings(outcome, channel, clock)
        if outcome.val_bpb is not None and eval_compile_cache:  # a kept run's: compiled ahead next time
            outcome.program = compilecache.stash_program(eval_compile_cache, os.path.join(private, "model.pt2"))
        return outcome
    finally:
        if proc is not None and proc.poll() is None:
            kill_group(proc, grace=0)
        for s in (ours, theirs):
            if s is not None:
                s.close()
        if trusted is not None:
            trusted.close()
        if group is not None:  # whatever of the run (or its evaluator) outlived its process group
            group.remove()
        hostfiles.remove(work)  # whatever the run made of its hand-off (unreadable, deep) goes too


def _harness_folders(repo, log_path):
    """The harness's folders an experiment must not see (sandbox.command hides them wherever a bind would
    show them): the checkout (its ledger, compile caches, results), the run log's, the temporary folder
    (other experiments' hand-offs and workspaces)."""
    folders = [os.path.dirname(os.path.abspath(log_path)), tempfile.gettempdir()]
    if repo:  # a worktree's, and its repository's main checkout, where the ledger and the caches are
        folders.append(os.path.abspath(repo))
        try:
            folders.append(gitutil.main_root(repo))
        except gitutil.GitError:
            pass
    return tuple(folders)


def _sandboxed(sandboxed):
    """Whether the run is sandboxed (None: when bubblewrap works), with a warning, once, for each
    protection this machine cannot give."""
    if sandboxed is None:
        sandboxed = sandbox.bwrap_problem() is None
        if not sandboxed:
            print(f"warning: running unsandboxed: {sandbox.bwrap_problem()}", file=sys.stderr)
    elif sandbox.bwrap_limits() is not None:
        _warn_once(f"warning: the sandbox's /tmp and /dev/shm are unsized ({sandbox.bwrap_limits()}): "
                   f"an experiment can fill half the memory with each")
    if limits.unavailable() is not None:
        _warn_once(f"warning: experiments run without some control groups ({limits.unavailable()}): without "
                   f"pids a run can start processes until the machine has none left, without memory fill it")
    return sandboxed


def _group(placement):
    """The run's own control groups (limits.Group), or None where this machine has none."""
    group = limits.Group.make(memory_share=(placement or {}).get("memory_share"))
    if group is not None and limits.swap_unbounded():
        _warn_once("warning: swap is on and the memory controller does not count it: a run past its memory "
                   "limit swaps (and slows the machine) instead of being stopped")
    return group


class _Clock(NamedTuple):
    """When a run was launched, and the times its training is held to (seconds)."""
    launched: float
    startup_allowance: float
    time_budget: float
    timeout: float


class _Watched(NamedTuple):
    """What the watch of a run looks at: its GPU (CUDA_VISIBLE_DEVICES, or None), the CPU account of all
    this harness's runs (limits.all_runs(), or None where runs have no groups), and its processes (a
    function giving their pids: its group's members, else its process tree)."""
    gpu: str
    runs: object
    members: object


def _process_tree(pid):
    try:
        root = psutil.Process(pid)
        return [pid] + [child.pid for child in root.children(recursive=True)]
    except psutil.Error:
        return []


class _GpuSampler(threading.Thread):
    """On a machine of several GPUs every one is bound into the sandbox, and CUDA_VISIBLE_DEVICES is the
    run's to change: a run that trains on more than one has more compute than the rules give it. This
    counts the GPUs the run's processes hold into outcome.gpus_held (the most at once), after random
    intervals (when it looks cannot be foreseen), off the supervising loop (nvidia-smi can take seconds)."""

    def __init__(self, outcome, watched):
        super().__init__(daemon=True)
        self.outcome, self.watched, self.done = outcome, watched, threading.Event()

    def run(self):
        while not self.done.wait(GPU_SAMPLE_S * random.uniform(0.4, 1.2)):
            held = contention.gpus_held(self.watched.members())
            if held is not None:
                self.outcome.gpus_held = max(self.outcome.gpus_held or 0, len(held))


def _supervise(proc, channel, outcome, clock, watched, writable, disks, tick=None, cancel=None):
    """Watch the running experiment until it ends or must be stopped (outcome.stopped says why): what
    it writes to the host's disks (the `writable` paths, and what the disks of `disks` lose), how long
    it trains, what other processes take meanwhile (outcome.cpu_share_others, gpu_others), how many GPUs
    it holds (outcome.gpus_held, where there are several)."""
    free = {path: _free_bytes(path) for path in disks}
    sampler = _GpuSampler(outcome, watched) if sandbox.gpu_count() > 1 else None
    if sampler:
        sampler.start()
    try:
        _watch_until_stopped(proc, channel, outcome, clock, watched, writable, free, tick, cancel)
    finally:
        if sampler:
            sampler.done.set()
            sampler.join(timeout=12)  # a look under way: nvidia-smi is given 10 s


def _watch_until_stopped(proc, channel, outcome, clock, watched, writable, free, tick, cancel):
    """_supervise's loop, five times a second (free: the disks' free bytes at the start)."""
    watch, measured_at = None, 0.0
    while proc.poll() is None:
        time.sleep(0.2)
        now = time.time()
        if tick and int(now * 5) % 5 == 0:
            tick(clock.launched)
        if now - measured_at >= 1.0:
            measured_at = now
            # what the disks lost counts too: files it deleted but holds open, folders it made unreadable
            (size, files), lost = disk_use(writable, FILE_LIMIT), _lost(free)
            if over_write_limits(size, files, lost, _IN_FLIGHT.count):
                outcome.stopped, outcome.written = "writes", (size, files, lost)
                break
        watch = _watch_training(watch, channel, outcome, now, clock.launched + clock.startup_allowance, watched)
        outcome.stopped = "cancelled" if cancel is not None and cancel.is_set() else _overdue(
            channel, now, clock, outcome.grace_s)
        if outcome.stopped == "budget" and watch is not None:  # a busy machine widens the grace
            outcome.stopped = _overdue(channel, now, clock, contention.stretch(outcome.grace_s, watch.peek()))
        if outcome.stopped:
            break
    _watch_training(watch, channel, outcome, time.time(), clock.launched + clock.startup_allowance, watched,
                    ended=True)


def _read_timings(outcome, channel, clock):
    """Fill the outcome's start-up, training, export and evaluation from what the channel saw."""
    # as the run said (its start-up however long: the outside allowance bounds it), else the end of
    # the start-up allowance
    training_from = channel.training_at or clock.launched + clock.startup_allowance
    outcome.startup_s = training_from - clock.launched
    if channel.handoff_at is None:
        return
    outcome.handed_over = True
    outcome.training_s = channel.exporting_at - training_from
    # to the end of the harness's copy: a run may go on training while it lasts (a large or sparse file);
    # a copy still under way (a cancelled run) ends now
    copied = channel.copied_at or time.time()
    outcome.export_s = copied - channel.exporting_at
    outcome.handoff_s = copied - clock.launched
    result = channel.result or {}
    outcome.val_bpb = result.get("val_bpb")
    outcome.eval_error = result.get("error")
    outcome.eval_ahead = result.get("ahead") is True
    outcome.eval_s = (channel.evaluated_at or time.time()) - copied


@functools.lru_cache(maxsize=None)
def _warn_once(message):
    print(message, file=sys.stderr)


def _watch_training(watch, channel, outcome, now, startup_ends, watched, ended=False):
    """Measure what other processes took from the start of the training (prepare.py's message, or the
    end of the start-up allowance) to its end (the export, or the run's end). Returns the watch while
    the training runs, else None."""
    if watch is None:
        training = channel.training_at is not None or now >= startup_ends
        if training and channel.exporting_at is None and not ended and outcome.cpu_share_others is None:
            # every run of this harness counts as its own (a swarm's sibling runs too), by their groups
            return contention.Watch(gpu=watched.gpu, group=watched.runs)
        return None
    if channel.exporting_at is not None or ended:
        outcome.cpu_share_others, outcome.gpu_others = watch.stop()
        return None
    return watch


def _overdue(channel, now, clock, grace):
    """Why the run must be stopped now ("budget", "export", "timeout"), or None."""
    training_from = min(channel.training_at or now, clock.launched + clock.startup_allowance)
    if channel.exporting_at is None and now > training_from + clock.time_budget + grace:
        return "budget"
    # the export until the harness holds its copy of the model (a run may train on while it copies)
    if channel.exporting_at is not None and channel.copied_at is None and now > channel.exporting_at + EXPORT_ALLOWANCE:
        return "export"
    evaluating = (channel.evaluated_at or now) - channel.copied_at if channel.copied_at else 0.0
    return "timeout" if now - clock.launched - evaluating > clock.timeout else None


def _evaluate(model, message, trusted, timeout):
    """Evaluate the model the harness took out of the experiment's reach."""
    reply = trusted.evaluate(model, message["batch_size"], timeout)
    if "val_bpb" in reply and not isinstance(reply["val_bpb"], (int, float)):
        return {"error": "the evaluator returned no number"}
    return reply


def take_over(message, handoff, private):
    """Copy the model a hand-off message names into the harness's private folder, where the experiment
    can no longer change it: (path of the copy, None), or (None, what is wrong)."""
    name, batch_size = message.get("file"), message.get("batch_size")
    if name != "model.pt2" or not isinstance(batch_size, int) or batch_size < 1:
        return None, "the hand-off must name model.pt2 and a positive batch size"
    # the experiment may swap its file for a link at any moment (to /dev/zero, to a file of the host's),
    # or let it grow: what is copied is the regular file opened, as far as it was when opened
    opened = hostfiles.open_regular(os.path.join(handoff, name))
    if opened is None:
        return None, "no model.pt2 in the hand-off folder"
    model = os.path.join(private, "model.pt2")
    source, info = opened
    with source:
        if info.st_size > WRITE_LIMIT:  # a sparse file costs the run nothing and our copy all of it
            return None, f"model.pt2 is larger than {WRITE_LIMIT / 2**30:g} GiB"
        try:
            with open(model, "wb") as target:  # the experiment may still write to its file; ours is fixed now
                hostfiles.copy_file(source, target, info.st_size)
        except OSError as e:
            return None, f"model.pt2 could not be copied ({e.strerror or e})"
    return model, None


def over_write_limits(size, files, lost, in_flight):
    """Whether a run's writes are past the limits: the bytes and files in its folders, or what the disks
    lost while it ran (files it deleted but holds open, folders it made unreadable). The disks are every
    run's: with `in_flight` runs of this harness at once each may lose WRITE_LIMIT of them, so that one
    run's legal writes never stop its siblings."""
    return size > WRITE_LIMIT or files > FILE_LIMIT or lost > WRITE_LIMIT * max(1, in_flight)


class _InFlight:
    """How many experiments this process runs at once (a local swarm's workers are its threads)."""

    def __init__(self):
        self.count, self.lock = 0, threading.Lock()

    def __enter__(self):
        with self.lock:
            self.count += 1

    def __exit__(self, *exc):
        with self.lock:
            self.count -= 1


_IN_FLIGHT = _InFlight()


def _lost(disks):
    """Bytes the disks lost since disks ({path: bytes free then}) was taken (0 where it cannot be told)."""
    lost = 0
    for path, then in disks.items():
        now = _free_bytes(path)
        if then is not None and now is not None:
            lost = max(lost, then - now)
    return lost


def _free_bytes(path):
    """Bytes free for us on the disk of path; None when it cannot be told."""
    try:
        st = os.statvfs(path)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


def disk_use(paths, most_files):
    """(bytes allocated, files and folders) under paths, links not followed; the count stops a little
    past most_files (a run that made millions of files is not walked through every second)."""
    size = files = 0
    pending = list(paths)
    while pending and files <= most_files:
        path = pending.pop()
        try:
            st = os.lstat(path)
        except OSError:
            continue  # gone meanwhile, or never made
        size, files = size + st.st_blocks * 512, files + 1
        if stat.S_ISDIR(st.st_mode):
            try:
                with os.scandir(path) as entries:
                    pending.extend(entry.path for entry in entries)
            except OSError:
                pass
    return size, files


def kill_group(proc, grace=KILL_GRACE):
    """SIGTERM the process group of proc, SIGKILL whatever is left after the grace period, reap.
    (The group may outlive its leader: it is signalled even when the leader has exited.)"""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()
