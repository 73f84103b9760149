"""The control groups experiments and coding CLIs run in (autoresearch/limits.py); the attacks through
the whole harness are in test_hostile.py."""

import json
import os
import subprocess
import sys
import time

import pytest

from autoresearch import limits

pytestmark = pytest.mark.skipif(limits.unavailable() is not None,
                                reason=f"missing control groups ({limits.unavailable()})")

SLEEP = [sys.executable, "-c", "import time; time.sleep(60)"]
# children that burn 0.3 s of CPU each (however long that takes on a busy machine) and are reaped by
# the kernel: their parent ignores SIGCHLD; it waits for their word through a pipe
UNCHARGED = """
import os, signal, time
signal.signal(signal.SIGCHLD, signal.SIG_IGN)
done, said = os.pipe()
for _ in range(4):
    if os.fork() == 0:
        while time.process_time() < 0.3:
            pass
        os.write(said, b"x")
        os._exit(0)
os.close(said)
got = 0
while got < 4:
    got += len(os.read(done, 4))
"""

def joined(group, argv):
    """argv started under the limits in group, once it is in it."""
    proc = subprocess.Popen(limits.command(argv, group))
    while proc.pid not in group.members():
        assert proc.poll() is None
        time.sleep(0.01)
    return proc


def test_a_run_gets_its_process_and_memory_limits():
    group = limits.Group.make(pids_max=17)
    try:
        assert open(os.path.join(group.paths["pids"], "pids.max")).read().strip() == "17"
        memory = [name for name in limits.MEMORY_LIMIT.values()
                  if os.path.exists(os.path.join(group.paths["memory"], name))]
        assert int(open(os.path.join(group.paths["memory"], memory[0])).read()) == limits.memory_limit()
        assert group.members() == []
    finally:
        group.remove()
    assert not any(os.path.exists(path) for path in group.paths.values())


def test_a_swarm_slots_run_may_hold_its_share_of_the_memory():
    group = limits.Group.make(memory_share=0.25)
    try:
        memory = [os.path.join(group.paths["memory"], name) for name in limits.MEMORY_LIMIT.values()
                  if os.path.exists(os.path.join(group.paths["memory"], name))]
        assert int(open(memory[0]).read()) == pytest.approx(limits.memory_limit() / 4, abs=1 << 20)
    finally:
        group.remove()


def test_a_process_under_the_limits_is_in_every_hierarchy_and_first_to_go_when_memory_runs_out():
    group = limits.Group.make()
    probe = "print(open('/proc/self/oom_score_adj').read().strip())"
    try:
        out = subprocess.run(limits.command([sys.executable, "-c", probe], group), capture_output=True, text=True)
        assert out.stdout.strip() == "1000", out.stderr
        proc = joined(group, SLEEP)
        for path in set(group.paths.values()):
            assert str(proc.pid) in open(os.path.join(path, "cgroup.procs")).read().split()
    finally:
        group.remove()
    assert proc.wait(timeout=10) == -9


def test_the_cpu_a_run_burns_in_children_the_kernel_reaps_is_charged_to_its_group():
    group = limits.Group.make()
    try:
        before = group.cpu_seconds()
        subprocess.run(limits.command([sys.executable, "-c", UNCHARGED], group), check=True)
        assert group.cpu_seconds() - before >= 1.2  # 4 x 0.3 s, on however busy a machine
    finally:
        group.remove()


def test_all_runs_of_the_harness_together_account_for_each_runs_cpu_and_processes():
    """A swarm's runs count as the harness's own, each other's kernel-reaped children included."""
    first, second = limits.Group.make(), limits.Group.make()
    everything = limits.all_runs()
    try:
        before = everything.cpu_seconds()
        for group in (first, second):
            subprocess.run(limits.command([sys.executable, "-c", UNCHARGED], group), check=True)
        assert everything.cpu_seconds() - before >= 2.4
        proc = joined(second, SLEEP)
        assert proc.pid in everything.members()
    finally:
        first.remove(), second.remove()


def test_a_run_past_its_memory_limit_is_killed_inside_its_group(monkeypatch):
    """The kernel's OOM killer acts inside the group: the harness (this test) goes on."""
    monkeypatch.setattr(limits, "MEMORY_RESERVE", (limits.memory_total() - (256 << 20), 0))
    if limits.swap_unbounded():
        pytest.skip("swap is on and not accounted by the memory controller: past its limit a run swaps")
    group = limits.Group.make()
    hog = "x = [bytearray(16 << 20) for _ in range(64)]\nprint('ALLOCATED')"  # 1 GiB
    try:
        out = subprocess.run(limits.command([sys.executable, "-c", hog], group), capture_output=True, text=True)
    finally:
        group.remove()
    assert out.returncode == -9 and "ALLOCATED" not in out.stdout, (out.returncode, out.stdout)


def test_the_groups_of_a_harness_that_died_go_with_the_next_harness():
    """A harness killed with -9 leaves its groups; the next harness process removes them."""
    code = ("import json, os, signal; from autoresearch import limits; g = limits.Group.make(); "
            "print(json.dumps(g.paths), flush=True); os.kill(os.getpid(), signal.SIGKILL)")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    left = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env).stdout)
    assert all(os.path.isdir(path) for path in left.values())
    subprocess.run([sys.executable, "-c", "from autoresearch import limits; limits.Group.make().remove()"],
                   check=True, env=env)
    assert not any(os.path.exists(path) for path in left.values())
    assert not any(os.path.exists(os.path.dirname(path)) for path in left.values())


def test_the_trusted_evaluator_runs_in_control_groups_of_its_own(tmp_path, smoke_cache):
    """It runs the run's program on the batch the run asks for: what it takes of the machine is bounded
    as the run's own processes are."""
    from autoresearch import evaluator
    (tmp_path / "exp").mkdir(), (tmp_path / "model").mkdir()
    group = limits.Group.make()
    trusted = evaluator.Evaluator(str(tmp_path / "exp"), str(tmp_path / "model"), "smoke", smoke_cache,
                                  sandboxed=False, group=group)
    try:
        deadline = time.monotonic() + 30
        while trusted.proc.pid not in group.members():
            assert time.monotonic() < deadline and trusted.proc.poll() is None
            time.sleep(0.01)
    finally:
        trusted.close()
        group.remove()
