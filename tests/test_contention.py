"""
The harness's measure of how much of the machine other processes took while an experiment trained
(contention.py): real processes burning real CPU, ours and not ours.
"""

import os
import subprocess
import sys
import time

import pytest

from autoresearch import contention, limits

BURN = "import time\nend = time.time() + {seconds}\nwhile time.time() < end: pass\n"


def burners(n, seconds, foreign):
    """n processes spinning for `seconds`; foreign ones are detached (not descendants of ours)."""
    code = BURN.format(seconds=seconds)
    if foreign:  # the shell exits at once: its children are re-parented away from us
        script = " ".join(f"{sys.executable} -c '{code}' &" for _ in range(n))
        subprocess.run(["sh", "-c", script + " exit 0"], check=True)
        return []
    return [subprocess.Popen([sys.executable, "-c", code]) for _ in range(n)]


def share_while(n, foreign, seconds=2.0, reaped=False):
    """The others' share measured while n burners run; reaped: ours end and are waited for first."""
    watch = contention.Watch() if reaped else None
    procs = burners(n, seconds if reaped else seconds + 0.5, foreign)
    if reaped:
        for p in procs:
            p.wait()
    else:
        time.sleep(0.3)  # let them start
        watch = contention.Watch()
        time.sleep(seconds)
    share, gpu_others = watch.stop()
    for p in procs:
        p.wait()
    time.sleep(0.3)
    return share


def test_processes_of_others_count_and_our_own_children_do_not():
    cpus = os.cpu_count()
    foreign = share_while(cpus, foreign=True)
    ours = share_while(cpus, foreign=False)
    assert foreign is not None and ours is not None
    assert foreign > 0.5 and foreign - ours > 0.25, (foreign, ours)


def test_our_children_that_ended_meanwhile_still_count_as_ours():
    foreign = share_while(os.cpu_count(), foreign=True)
    reaped = share_while(os.cpu_count(), foreign=False, reaped=True)
    assert foreign - reaped > 0.25, (foreign, reaped)


def test_a_run_is_starved_from_a_quarter_of_the_cpus_or_another_process_on_its_gpu(monkeypatch):
    assert not contention.starved(0.2, None) and contention.starved(0.25, None)
    assert contention.starved(None, 1) and not contention.starved(None, None) and not contention.starved(0.0, 0)
    monkeypatch.setenv("AUTORESEARCH_STARVED_SHARE", "1")
    assert not contention.starved(0.9, None)


def test_the_reason_is_said_in_words():
    row = {"cpu_share_others": 0.634, "gpu_others": 2}
    assert contention.describe(row) == ("other processes took 63% of the CPUs during training; "
                                        "2 other process(es) shared its GPU")
    assert contention.describe({}) == "not measured"


def test_a_busy_machine_widens_an_allowance_up_to_twice():
    assert contention.stretch(5.0, None) == 5.0 and contention.stretch(5.0, 0.0) == 5.0
    assert contention.stretch(5.0, 0.2) == 6.25 and contention.stretch(5.0, 0.99) == 10.0


@pytest.mark.skipif(not limits.available("cpuacct"), reason=f"no CPU account ({limits.unavailable()})")
def test_children_the_kernel_reaps_count_as_ours_through_the_runs_group():
    """A run's children whose parent ignores SIGCHLD are reaped by the kernel, their CPU time charged to
    no process of ours: without the run's group they would look like others taking the CPUs (widening
    the run's own allowances); its group's account counts them. Each child burns 0.5 s of CPU, however
    long that takes on a busy machine."""
    cpus = os.cpu_count()
    code = ("import os, signal, time\nsignal.signal(signal.SIGCHLD, signal.SIG_IGN)\ndone, said = os.pipe()\n"
            f"for _ in range({cpus}):\n    if os.fork() == 0:\n        while time.process_time() < 0.5: pass\n"
            "        os.write(said, b'x')\n        os._exit(0)\nos.close(said)\ngot = 0\n"
            f"while got < {cpus}:\n    got += len(os.read(done, {cpus}))\n")
    group = limits.Group.make()
    try:
        without, with_group, started = contention.Watch(), contention.Watch(group=group), time.monotonic()
        subprocess.run(limits.command([sys.executable, "-c", code], group), check=True)
        wall = time.monotonic() - started
        hidden = (without.stop()[0] - with_group.stop()[0]) * wall * cpus  # CPU seconds told apart
        assert hidden >= 0.8 * 0.5 * cpus, hidden
    finally:
        group.remove()
