"""
How much of the machine other processes took while an experiment trained.

A run that shares its CPUs or its GPU trains fewer steps and scores worse than the same train.py on
a quiet machine; a starved baseline makes every later change look like a gain. The harness measures,
over the training window (first batch to export):
- the CPU share of everyone else: the machine's busy time (steal included: a noisy neighbour on a
  VM) minus the CPU time of this process and everything it started, over wall time x CPUs. The
  experiments' own share is their control groups' account where they have one (limits.all_runs): a
  process a run starts and lets the kernel reap (its parent ignores SIGCHLD) is charged to no parent,
  and would otherwise count as the others', widening the allowances a busy machine earns;
- on CUDA, other processes holding a context on the experiment's GPU (nvidia-smi's own list).

    watch = Watch(group=runs)       # when training starts; runs: a limits.Group (all_runs()), or None
    share, gpu_others = watch.stop()

The numbers are the harness's own; train.py cannot change them.
"""

import os
import shutil
import subprocess
import time

import psutil

STARVED_SHARE = 0.25  # others took at least this fraction of the CPUs during training: starved
STARVED_SHARE_ENV = "AUTORESEARCH_STARVED_SHARE"  # another fraction (1 never calls a run starved by CPU)


def _busy_seconds():
    t = psutil.cpu_times()
    return sum(t) - t.idle - getattr(t, "iowait", 0.0) - getattr(t, "guest", 0.0) - getattr(t, "guest_nice", 0.0)


def _ours(group=None):
    """(CPU seconds, pids) of this process and every process it started: the live ones, and those it
    reaped already (their time moves into its children_* fields when they are reaped). With a group
    that keeps a CPU account, the group's account stands for its members."""
    me = psutil.Process()
    t = me.cpu_times()
    total, pids = t.user + t.system + t.children_user + t.children_system, {me.pid}
    account = group.cpu_seconds() if group is not None else None
    members = set(group.members()) if account is not None else set()
    for child in me.children(recursive=True):
        pids.add(child.pid)
        if child.pid in members:
            continue
        try:
            t = child.cpu_times()
        except psutil.Error:
            continue
        total += t.user + t.system + t.children_user + t.children_system
    return total + (account or 0.0), pids | members


def _smi(*query):
    """nvidia-smi's CSV lines for a query (its documented --format=csv interface), or None without it."""
    smi = shutil.which("nvidia-smi")
    if not smi:
        return None
    try:
        out = subprocess.run([smi, *query, "--format=csv,noheader"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return [[cell.strip() for cell in line.split(",")] for line in out.stdout.splitlines() if line.strip()]


def gpu_apps():
    """(pid, GPU uuid) for each context a process holds on an NVIDIA GPU (a process on two GPUs is listed
    twice), or None (no nvidia-smi)."""
    apps = _smi("--query-compute-apps=pid,gpu_uuid")
    if apps is None:
        return None
    return [(int(cells[0]), cells[1]) for cells in apps if len(cells) == 2 and cells[0].isdigit()]


def _gpu_others(ours, visible=None):
    """How many processes not of ours hold a context on our GPU (None: not a CUDA machine, or no
    nvidia-smi). Our GPU is the first of `visible` (the experiment's CUDA_VISIBLE_DEVICES), else GPU 0."""
    gpus, apps = _smi("--query-gpu=index,uuid"), gpu_apps()
    if gpus is None or apps is None:
        return None
    visible = (visible or os.environ.get("CUDA_VISIBLE_DEVICES") or "0").split(",")[0].strip()
    uuids = {cells[0]: cells[1] for cells in gpus if len(cells) == 2}
    ours_uuid = uuids.get(visible, visible)  # CUDA_VISIBLE_DEVICES may name a UUID
    return len({pid for pid, uuid in apps if uuid == ours_uuid and pid not in ours})


def gpus_held(pids):
    """The GPUs (uuids) the processes `pids` hold contexts on, or None where that cannot be told."""
    apps, pids = gpu_apps(), set(pids)
    return None if apps is None else {uuid for pid, uuid in apps if pid in pids}


class Watch:
    """Started when the training starts; stop() when it ends gives (CPU share of the others, number of
    other processes on our GPU or None). gpu: the experiment's CUDA_VISIBLE_DEVICES; group: its
    limits.Group."""

    def __init__(self, gpu=None, group=None):
        self.gpu, self.group = gpu, group
        self.wall, self.busy, (self.ours, _) = time.monotonic(), _busy_seconds(), _ours(group)

    def peek(self):
        """The CPU share of the others so far (None over too short a time)."""
        return self._share()[0]

    def stop(self):
        share, pids = self._share()
        return share, _gpu_others(pids, self.gpu)

    def _share(self):
        wall, busy, (ours, pids) = time.monotonic() - self.wall, _busy_seconds() - self.busy, _ours(self.group)
        capacity = wall * (psutil.cpu_count() or 1)
        share = max(0.0, min(1.0, (busy - (ours - self.ours)) / capacity)) if capacity > 0.5 else None
        return share, pids


def starved_share():
    """The CPU share of others from which a run counts as starved (STARVED_SHARE unless the
    environment says otherwise)."""
    try:
        value = float(os.environ.get(STARVED_SHARE_ENV) or STARVED_SHARE)
    except ValueError:
        value = STARVED_SHARE
    return value if 0 < value <= 1 else STARVED_SHARE


def starved(share, gpu_others):
    """Whether a run measured so was starved."""
    return bool((share is not None and share >= starved_share()) or gpu_others)


MAX_STRETCH = 2.0  # a busy machine widens an allowance at most this much (an attack gains at most this)


def stretch(seconds, share):
    """An allowance for work that runs slower when others take `share` of the CPUs (the untimed first
    steps a claimed training time leaves out): seconds / (1 - share), at most MAX_STRETCH times. Only the
    harness's own measurement widens it; an experiment's processes count as its own, never as others."""
    if not share:
        return seconds
    return seconds * min(MAX_STRETCH, 1.0 / max(1e-9, 1.0 - share))


def describe(row):
    """What the ledger row says others took, in words."""
    parts = []
    if row.get("cpu_share_others") is not None:
        parts.append(f"other processes took {100 * row['cpu_share_others']:.0f}% of the CPUs during training")
    if row.get("gpu_others"):
        parts.append(f"{row['gpu_others']} other process(es) shared its GPU")
    return "; ".join(parts) or "not measured"
