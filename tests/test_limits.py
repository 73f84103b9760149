"""The pids control group each experiment runs in (autoresearch/limits.py); the attacks on it are in
test_hostile.py."""

import os
import subprocess
import sys

import pytest

from autoresearch import limits

pytestmark = pytest.mark.skipif(limits.unavailable() is not None,
                                reason=f"no pids control group ({limits.unavailable()})")

JOIN_AND_SLEEP = "import sys, time; open(sys.argv[1], 'w').write(str(__import__('os').getpid())); time.sleep(60)"


def test_a_group_has_the_process_limit_it_was_made_with():
    group = limits.Group.make(pids_max=17)
    try:
        assert open(os.path.join(group.path, "pids.max")).read().strip() == "17"
        assert group.members() == []
    finally:
        group.remove()
    assert not os.path.exists(group.path)


def test_removing_a_group_kills_what_is_left_in_it():
    group = limits.Group.make()
    proc = subprocess.Popen([sys.executable, "-c", JOIN_AND_SLEEP, group.procs])
    try:
        while proc.pid not in group.members():
            assert proc.poll() is None
        group.remove()
        assert proc.wait(timeout=10) == -9 and not os.path.exists(group.path)
    finally:
        proc.kill()


def test_the_groups_of_a_harness_that_died_go_with_the_next_group_made():
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    parent = limits.parent_folder()
    stale = os.path.join(parent, f"{limits.PREFIX}{dead}-0badc0de")
    os.mkdir(stale)
    group = limits.Group.make()
    group.remove()
    assert not os.path.exists(stale)
