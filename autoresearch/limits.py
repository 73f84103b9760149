"""
What a sandboxed process (an experiment, a coding CLI) may take of the machine besides its sandbox's
files: processes, memory and file size. Each runs under command(), which before it execs the process
- puts it in a pids control group of its own (Group): its PID namespace hides its processes, but
  they count against the machine's, and a fork bomb would leave the host (the harness, a concurrent
  experiment, the operator's shell) unable to start anything until it is stopped. Forks past PIDS_MAX
  tasks (threads count; torch starts one per core, inductor a pool of compile workers) fail inside;
- makes it the kernel's first choice when memory runs out (oom_score_adj 1000; without capabilities
  it cannot lower that): a run that fills the memory costs itself, not the harness or its evaluator;
- caps the size of any file it writes (RLIMIT_FSIZE), when asked.

    group = Group.make()                       # None where the machine gives us no pids controller
    proc = subprocess.Popen(command(argv, group, file_size), ...)
    group.remove()                             # once it is over: what is left in it is killed first

cgroup v1 (a `pids` hierarchy) and v2 (the `pids` controller, where this process may enable it for
a child: the root group) work as root; elsewhere (a rootless user, a container whose group holds
processes) there is no group and unavailable() says why. The sandbox shows /sys read-only, and the
process has no capabilities: it cannot move itself out.
"""

import functools
import os
import signal
import sys
import time
import uuid

PIDS_MAX = 4096
PREFIX = "autoresearch-"
V1 = "/sys/fs/cgroup/pids"
V2 = "/sys/fs/cgroup"
# a small exec, not preexec_fn: the harness has threads. argv: file size limit (0: none), the group's
# cgroup.procs ("-": none), the command
UNDER_LIMITS = """
import os, resource, sys
if int(sys.argv[1]):
    resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[1]),) * 2)
with open("/proc/self/oom_score_adj", "w") as f:
    f.write("1000")
if sys.argv[2] != "-":
    with open(sys.argv[2], "w") as f:
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


def _own_v2_group():
    """This process's cgroup v2 path ('' for the root), or None when it is not in one."""
    for line in _read("/proc/self/cgroup").splitlines():
        if line.startswith("0::"):
            return line[3:].strip().strip("/")
    return None


@functools.lru_cache(maxsize=1)
def _where():
    """(folder where experiments' groups are made, None) or (None, why there is none)."""
    if os.path.isfile(os.path.join(V1, "cgroup.procs")):
        return (V1, None) if os.access(V1, os.W_OK) else (None, f"{V1} is not writable by this user")
    if "pids" not in _read(os.path.join(V2, "cgroup.controllers")).split():
        return None, "no pids controller (cgroup v1 or v2) is mounted"
    if _own_v2_group() != "":
        return None, "this process's cgroup v2 group is not the root, where it could enable the pids controller"
    try:
        if "pids" not in _read(os.path.join(V2, "cgroup.subtree_control")).split():
            _write(os.path.join(V2, "cgroup.subtree_control"), "+pids")
    except OSError as e:
        return None, f"the pids controller cannot be enabled ({e.strerror})"
    return V2, None


def unavailable():
    """None when runs get a pids group of their own, else why not (one line)."""
    return _where()[1]


def parent_folder():
    """The folder experiments' groups are made in, or None."""
    return _where()[0]


def _remove_stale(parent):
    """Empty groups of harnesses that died before removing them."""
    for name in os.listdir(parent):
        pid = name[len(PREFIX):].split("-")[0]
        if name.startswith(PREFIX) and pid.isdigit() and not os.path.exists(f"/proc/{pid}"):
            try:
                os.rmdir(os.path.join(parent, name))
            except OSError:
                pass  # not empty: its processes still run, somebody else's to stop


class Group:
    def __init__(self, path):
        self.path = path
        self.procs = os.path.join(path, "cgroup.procs")

    @classmethod
    def make(cls, pids_max=None):
        parent = parent_folder()
        if parent is None:
            return None
        _remove_stale(parent)
        path = os.path.join(parent, f"{PREFIX}{os.getpid()}-{uuid.uuid4().hex[:8]}")
        os.mkdir(path)
        try:
            _write(os.path.join(path, "pids.max"), str(pids_max or PIDS_MAX))
        except OSError:
            os.rmdir(path)
            raise
        return cls(path)

    def members(self):
        return [int(pid) for pid in _read(self.procs).split()]

    def remove(self, wait=5.0):
        """Kill what is still in the group, then remove it (its processes take a moment to go)."""
        deadline = time.monotonic() + wait
        while True:
            for pid in self.members():
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            try:
                os.rmdir(self.path)
                return
            except FileNotFoundError:
                return
            except OSError:
                if time.monotonic() > deadline:
                    return  # a process in uninterruptible sleep; the next make() removes the group
                time.sleep(0.05)


def command(argv, group=None, file_size=None):
    """argv run under the limits: in group (a Group, or None), with no file past file_size bytes."""
    return [sys.executable, "-I", "-c", UNDER_LIMITS, str(file_size or 0), group.procs if group else "-"] + list(argv)
