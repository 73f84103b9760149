"""Files a sandboxed process wrote, as the harness opens, copies and removes them (hostfiles.py)."""

import os
import stat

from autoresearch import hostfiles


def tree(root):
    return {os.path.relpath(os.path.join(folder, name), root): open(os.path.join(folder, name)).read()
            for folder, _, files in os.walk(root) for name in files}


def test_a_copy_follows_no_link_and_waits_on_no_fifo(tmp_path):
    source, target = tmp_path / "source", tmp_path / "target"
    (source / "inner").mkdir(parents=True)
    target.mkdir()
    (source / "inner" / "kept").write_text("kept")
    (tmp_path / "host-secret").write_text("secret")
    (source / "link").symlink_to(tmp_path / "host-secret")
    (source / "folder-link").symlink_to(tmp_path, target_is_directory=True)
    os.mkfifo(source / "fifo")
    assert hostfiles.copy_tree(str(source), str(target)) == (4, 3, True)
    assert tree(target) == {"inner/kept": "kept"}


def test_a_copy_carries_no_setuid_bit_and_no_write_for_others(tmp_path):
    source, target = tmp_path / "source", tmp_path / "target"
    source.mkdir(), target.mkdir()
    (source / "program").write_text("#!/bin/sh\n")
    os.chmod(source / "program", 0o6777)
    hostfiles.copy_tree(str(source), str(target))
    assert stat.S_IMODE(os.stat(target / "program").st_mode) == 0o755


def test_a_copy_past_its_total_limit_stops_and_says_so(tmp_path):
    source, target = tmp_path / "source", tmp_path / "target"
    source.mkdir(), target.mkdir()
    for name in "abc":
        (source / name).write_text("x" * 10)
    copied, skipped, complete = hostfiles.copy_tree(str(source), str(target), total_limit=25)
    assert (copied, skipped, complete) == (20, 0, False) and len(os.listdir(target)) == 2


def test_files_past_the_file_limit_and_names_skipped_at_the_top_are_left_out(tmp_path):
    source, target = tmp_path / "source", tmp_path / "target"
    (source / "sessions").mkdir(parents=True)
    (source / "deep" / "sessions").mkdir(parents=True)
    target.mkdir()
    (source / "sessions" / "history").write_text("long")
    (source / "deep" / "sessions" / "kept").write_text("kept")
    (source / "big").write_text("x" * 100)
    (source / "settings").write_text("{}")
    assert hostfiles.copy_tree(str(source), str(target), skip=("sessions",), file_limit=10) == (6, 1, True)
    assert tree(target) == {"deep/sessions/kept": "kept", "settings": "{}"}


def test_read_small_reads_a_regular_file_within_its_limit_only(tmp_path):
    (tmp_path / "small").write_bytes(b"12345")
    (tmp_path / "link").symlink_to(tmp_path / "small")
    os.mkfifo(tmp_path / "fifo")
    assert hostfiles.read_small(str(tmp_path / "small"), 5) == b"12345"
    assert hostfiles.read_small(str(tmp_path / "small"), 4) is None
    assert hostfiles.read_small(str(tmp_path / "link"), 5) is None
    assert hostfiles.read_small(str(tmp_path / "fifo"), 5) is None


def test_a_folder_made_unreadable_and_deep_is_still_removed(tmp_path):
    folder = hostfiles.private_folder("test-hostfiles-")
    deep = folder
    for _ in range(50):
        deep = os.path.join(deep, "d")
    os.makedirs(deep)
    os.chmod(os.path.join(folder, "d"), 0)
    parent = os.path.dirname(folder)
    assert stat.S_IMODE(os.stat(parent).st_mode) == 0o700
    hostfiles.remove_private(folder)
    assert not os.path.exists(parent)
