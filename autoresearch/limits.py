"""
What a sandboxed process (an experiment, a coding CLI) may take of the machine besides its sandbox's
files: processes, memory, file size; and what it used of the CPUs, counted by the kernel. Each runs
under command(), which before it execs the process
- puts it in a control group of its own (Group), inside one per harness process (all its runs
  together), for each controller the machine lets us use:
  - pids: its PID namespace hides its processes, but they count against the machine's, and a fork
    bomb would leave the host (the harness, a concurrent experiment, the operator's shell) unable to
    start anything. Forks past PIDS_MAX tasks per run (threads count; torch starts one per core,
    inductor a pool of compile workers), or past PIDS_SHARE of the machine's for all runs, fail inside;
  - memory: all runs together get the machine's memory less MEMORY_RESERVE (the harness, its trusted
    evaluators, the system); past it the kernel's out-of-memory killer acts inside the group, never
    on the harness. Pages a run leaves in its /tmp or /dev/shm (tmpfs) count too;
  - cpuacct (cgroup v2: every group's cpu.stat): the CPU time of everything the run started, reaped
    or not (a child whose parent ignores SIGCHLD is reaped by the kernel, and its time is charged to
    nobody else): the contention measure counts it as the run's own (contention.py);
- makes it the kernel's first choice when memory runs out anyway (oom_score_adj 1000);
- caps the size of any file it writes (RLIMIT_FSIZE), when asked.

    group = Group.make()                       # None where the machine gives us no controller at all
    proc = subprocess.Popen(command(argv, group, file_size), ...)
    group.cpu_seconds()                        # None without a CPU account
    group.remove()                             # once it is over: what is left in it is killed first

cgroup v1 (a hierarchy per controller, groups made under this process's own) and v2 (where this
process is in the root group, which may enable controllers for a child) work as root; elsewhere (a
rootless user, a container whose group holds processes) a controller is missing and unavailable()
says which. The sandbox shows /sys read-only, and the process has no capabilities: it cannot move
itself out.
"""

import atexit
import functools
import os
import signal
import sys
import time
import uuid

CONTROLLERS = ("pids", "memory", "cpuacct")
PIDS_MAX = 4096                    # tasks (processes and threads) of one run
PIDS_SHARE = 0.5                   # of the machine's pid_max, for all runs of this harness together
MEMORY_RESERVE = (2 << 30, 1 / 8)  # bytes, share of the memory: the larger is kept from all runs together
PREFIX = "autoresearch-"
# a small exec, not preexec_fn: the harness has threads. argv: file size limit (0: none), the
# cgroup.procs files to join, ":"-separated ("-": none), the command
UNDER_LIMITS = """
import os, resource, sys
if int(sys.argv[1]):
    resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[1]),) * 2)
if os.path.exists("/proc/self/oom_score_adj"):  # Linux: first to go when memory runs out (not macOS)
    with open("/proc/self/oom_score_adj", "w") as f:
        f.write("1000")
for procs in sys.argv[2].split(":") if sys.argv[2] != "-" else ():
    with open(procs, "w") as f:
        f.write(str(os.getpid()))
os.execvp(sys.argv[3], sys.argv[3:])
"""


def _read(path):
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


def _write(path, text):
    with open(path, "w") as f:
        f.write(text)


def _mounts():
    """(v1 {controller: mount point}, v2 mount point or None)."""
    v1, v2 = {}, None
    for line in _read("/proc/self/mounts").splitlines():
        fields = line.split()
        if len(fields) < 4:
            continue
        if fields[2] == "cgroup2":
            v2 = v2 or fields[1]
        elif fields[2] == "cgroup":
            for option in fields[3].split(","):
                if option in CONTROLLERS:
                    v1[option] = fields[1]
    return v1, v2


def _own_groups():
    """({v1 controller: this process's group path}, its v2 group path or None)."""
    v1, v2 = {}, None
    for line in _read("/proc/self/cgroup").splitlines():
        _, controllers, path = line.split(":", 2)
        if controllers == "":
            v2 = path.strip("/")
        for controller in controllers.split(","):
            v1[controller] = path.strip("/")
    return v1, v2


def memory_total():
    """The machine's memory in bytes (None when /proc/meminfo does not say)."""
    for line in _read("/proc/meminfo").splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) * 1024
    return None


def memory_limit():
    """Bytes the runs may hold, each and all together: the machine's memory less MEMORY_RESERVE, in
    whole MiB, at least 256 MiB (None when the machine's memory is not known)."""
    total = memory_total()
    if total is None:
        return None
    return max(256, (total - max(MEMORY_RESERVE[0], int(total * MEMORY_RESERVE[1]))) >> 20) << 20


@functools.lru_cache(maxsize=1)
def _places():
    """({controller: (version, folder this process's groups are made in)}, {controller: why not})."""
    mounts_v1, mount_v2 = _mounts()
    own_v1, own_v2 = _own_groups()
    places, missing = {}, {}
    v2_controllers = _read(os.path.join(mount_v2, "cgroup.controllers")).split() if mount_v2 else []
    for controller in CONTROLLERS:
        if controller in mounts_v1:
            base = os.path.join(mounts_v1[controller], own_v1.get(controller, ""))
            if not os.path.isdir(base):  # a container shown its own group as the mount's root
                base = mounts_v1[controller]
            if os.path.isdir(base) and os.access(base, os.W_OK):
                places[controller] = (1, base)
            else:
                missing[controller] = f"{base} is not writable by this user"
        elif mount_v2 and (controller == "cpuacct" or controller in v2_controllers):
            if own_v2 != "":
                missing[controller] = ("this process's cgroup v2 group is not the root, where it could enable "
                                       "controllers")
            else:
                places[controller] = (2, mount_v2)
        else:
            missing[controller] = "no such controller is mounted"
    v2_wanted = [c for c, (version, _) in places.items() if version == 2 and c != "cpuacct"]
    if v2_wanted:
        enabled = _read(os.path.join(mount_v2, "cgroup.subtree_control")).split()
        try:
            for controller in v2_wanted:
                if controller not in enabled:
                    _write(os.path.join(mount_v2, "cgroup.subtree_control"), f"+{controller}")
        except OSError as e:
            for controller in v2_wanted:
                places.pop(controller)
                missing[controller] = f"cgroup v2 cannot enable it ({e.strerror})"
    return places, missing


def unavailable():
    """None when runs get every controller, else which they lack and why (one line)."""
    missing = _places()[1]
    return "; ".join(f"{controller}: {why}" for controller, why in missing.items()) or None


def available(controller):
    return controller in _places()[0]


def _namespace():
    """This process's PID namespace: a pid in a group's name means something only within it."""
    try:
        return os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return 0


def _remove_stale(folder):
    """The groups of harnesses (of our PID namespace) that died before removing theirs, when empty."""
    mine = f"{PREFIX}{_namespace()}-"
    for name in os.listdir(folder):
        pid = name[len(mine):]
        if name.startswith(mine) and pid.isdigit() and not os.path.exists(f"/proc/{pid}"):
            path = os.path.join(folder, name)
            try:  # another harness starting now may be removing it too
                children = [os.path.join(path, child) for child in os.listdir(path)]
            except OSError:
                continue
            for child in children:
                if os.path.isdir(child):
                    _rmdir(child)
            _rmdir(path)


def _rmdir(path):
    try:
        os.rmdir(path)
    except OSError:
        pass  # not empty: its processes still run, somebody else's to stop


@functools.lru_cache(maxsize=1)
def _parents():
    """{controller: (version, this harness process's group, holding all its runs)}, made on first use."""
    parents = {}
    seen = {}
    for controller, (version, base) in _places()[0].items():
        if (version, base) in seen:  # cgroup v2: one group for every controller
            parents[controller] = (version, seen[(version, base)])
            continue
        _remove_stale(base)
        path = os.path.join(base, f"{PREFIX}{_namespace()}-{os.getpid()}")
        os.makedirs(path, exist_ok=True)
        atexit.register(_rmdir, path)
        seen[(version, base)] = path
        parents[controller] = (version, path)
    limit = memory_limit()
    for controller, (version, path) in parents.items():
        if controller == "pids":
            pid_max = int(_read("/proc/sys/kernel/pid_max").strip() or 32768)
            _write(os.path.join(path, "pids.max"), str(max(PIDS_MAX, int(pid_max * PIDS_SHARE))))
        elif controller == "memory" and limit is not None:
            _limit_memory(path, version, limit)
    v2 = {path for version, path in parents.values() if version == 2}
    for path in v2:  # its runs' groups get the controllers
        wanted = [c for c, (version, p) in parents.items() if p == path and c != "cpuacct"]
        if wanted:
            _write(os.path.join(path, "cgroup.subtree_control"), " ".join(f"+{c}" for c in wanted))
    return parents


def swap_unbounded():
    """Whether a run past its memory limit would swap rather than be killed: swap is on, and the memory
    controller does not account it."""
    parents = _parents()
    if "memory" not in parents or len(_read("/proc/swaps").splitlines()) <= 1:
        return False
    version, path = parents["memory"]
    return not os.path.exists(os.path.join(path, SWAP_LIMIT[version]))


def all_runs():
    """A Group standing for every run of this harness process together (their parent groups; its CPU
    account counts theirs), or None. Never to remove: the runs' own groups are."""
    parents = _parents()
    return Group({controller: path for controller, (_, path) in parents.items()}) if parents else None


# by cgroup version: the file of a group's memory limit, and of its swap limit (where swap is accounted;
# v1 counts memory and swap together, v2 swap alone)
MEMORY_LIMIT = {1: "memory.limit_in_bytes", 2: "memory.max"}
SWAP_LIMIT = {1: "memory.memsw.limit_in_bytes", 2: "memory.swap.max"}


def _limit_memory(path, version, limit):
    """limit bytes of memory for the group at path, and no swap past it (where swap is accounted): at its
    limit a run is killed, not left to thrash the host's swap."""
    _write(os.path.join(path, MEMORY_LIMIT[version]), str(limit))
    if os.path.exists(os.path.join(path, SWAP_LIMIT[version])):
        _write(os.path.join(path, SWAP_LIMIT[version]), str(limit) if version == 1 else "0")


class Group:
    """One run's control group, in each hierarchy (paths: {controller: folder})."""

    def __init__(self, paths):
        self.paths = paths
        self.procs = ":".join(sorted({os.path.join(path, "cgroup.procs") for path in paths.values()}))

    @classmethod
    def make(cls, pids_max=None, memory_share=None):
        """A new group for one run, or None where no controller can be had, or where making it failed
        (said once: a run without limits beats a harness that stops). memory_share: the share of all
        runs' memory this one may hold (a swarm's slot: one run filling it all could get the kernel to
        kill a sibling)."""
        try:
            return cls._make(pids_max, memory_share)
        except OSError as e:
            _warn_once(f"warning: a run's control group could not be made ({e}); it runs without limits")
            return None

    @classmethod
    def _make(cls, pids_max, memory_share):
        parents = _parents()
        if not parents:
            return None
        name, paths = f"run-{uuid.uuid4().hex[:12]}", {}
        try:
            for controller, (version, parent) in parents.items():
                path = os.path.join(parent, name)
                if path not in paths.values():
                    os.mkdir(path)
                paths[controller] = path
            if "pids" in paths:
                _write(os.path.join(paths["pids"], "pids.max"), str(pids_max or PIDS_MAX))
            limit = memory_limit()
            if "memory" in paths and limit is not None:
                share = min(1.0, max(0.0, memory_share or 1.0))
                _limit_memory(paths["memory"], parents["memory"][0], max(256 << 20, int(limit * share)))
                if parents["memory"][0] == 2:
                    _write(os.path.join(paths["memory"], "memory.oom.group"), "1")  # a run goes whole
        except OSError:
            cls(paths).remove()
            raise
        return cls(paths)

    def members(self):
        """The pids in the group and the groups below it."""
        found = set()
        for path in set(self.paths.values()):
            for folder, _, _ in os.walk(path):
                found.update(int(pid) for pid in _read(os.path.join(folder, "cgroup.procs")).split())
        return sorted(found)

    def cpu_seconds(self):
        """CPU seconds everything in the group used, reaped or not; None without a CPU account."""
        path = self.paths.get("cpuacct")
        if path is None:
            return None
        if _places()[0]["cpuacct"][0] == 1:
            text = _read(os.path.join(path, "cpuacct.usage")).strip()
            return int(text) / 1e9 if text.isdigit() else None
        for line in _read(os.path.join(path, "cpu.stat")).splitlines():
            if line.startswith("usage_usec "):
                return int(line.split()[1]) / 1e6
        return None

    def remove(self, wait=5.0):
        """Kill what is still in the group, then remove it (its processes take a moment to go)."""
        deadline = time.monotonic() + wait
        for path in set(self.paths.values()):
            while True:
                _kill(path)
                try:
                    os.rmdir(path)
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        break  # a process in uninterruptible sleep; the group goes with the harness's
                    time.sleep(0.05)


@functools.lru_cache(maxsize=None)
def _warn_once(message):
    print(message, file=sys.stderr)


def _kill(path):
    """SIGKILL everything in the group at path (cgroup v2's cgroup.kill where there is one: no pid read
    and then reused in between)."""
    if os.path.exists(os.path.join(path, "cgroup.kill")):
        try:
            _write(os.path.join(path, "cgroup.kill"), "1")
            return
        except OSError:
            pass
    for pid in _read(os.path.join(path, "cgroup.procs")).split():
        try:
            os.kill(int(pid), signal.SIGKILL)
        except (ProcessLookupError, ValueError):
            pass


def command(argv, group=None, file_size=None):
    """argv run under the limits: in group (a Group, or None), with no file past file_size bytes."""
    return [sys.executable, "-I", "-c", UNDER_LIMITS, str(file_size or 0), group.procs if group else "-"] + list(argv)
