"""
Files and folders on the host's disk that a sandboxed process writes, or could still change while the
harness reads them: an experiment's hand-off and compile-cache workspace, a coding CLI's scratch
folder and settings copy. How the harness makes them, opens them, copies them and removes them.

Such a process is root inside its sandbox when the harness runs as root. At any moment it may swap a
file for a link (to /dev/zero, to a file of the host's) or a FIFO, let a file grow, make folders
unreadable or deeper than Python's recursion, or leave a setuid program for another user. So:
- a folder it writes sits inside one only this user can open (private_folder), and goes whole
  (remove, remove_private);
- a file is opened once, without following a link or waiting on a pipe, and checked as opened
  (open_regular); what is read or copied is as much as it held then (read_small, copy_file);
- a tree is copied as folders and regular files only, within limits, without setuid bits (copy_tree).
"""

import os
import shutil
import stat
import subprocess
import tempfile


def private_folder(prefix):
    """A new, empty folder for a sandboxed process to write, inside one (0700) that only this user can
    open. Run by root, the process inside is the host's root: it can make the folder it is given
    readable by all and leave a setuid program there, which the parent keeps from every other user."""
    path = os.path.join(tempfile.mkdtemp(prefix=prefix), "work")
    os.mkdir(path)
    return path


def remove_private(path):
    """Delete a private_folder, its parent with it; never raises."""
    remove(os.path.dirname(path))


def remove(path):
    """Delete a folder a sandboxed process wrote, whatever it made of it (a tree too deep for Python's
    recursion, folders without permissions): never raises."""
    try:
        shutil.rmtree(path)
    except FileNotFoundError:
        pass
    except Exception:
        subprocess.run(["chmod", "-R", "u+rwX", path], capture_output=True)
        subprocess.run(["rm", "-rf", "--one-file-system", "--", path], capture_output=True)


def open_regular(path, dir_fd=None):
    """(the file at path opened for reading, its fstat) when it is a regular file, else None. Opened
    once, without following a link or waiting on a pipe, and checked as opened: a check of the path
    and then an open of it would open whatever a sandboxed process swapped in between. dir_fd: path
    is a name in that open folder."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=dir_fd)
    except OSError:
        return None
    f = os.fdopen(fd, "rb")
    try:
        info = os.fstat(fd)
    except OSError:
        info = None
    if info is None or not stat.S_ISREG(info.st_mode):
        f.close()
        return None
    return f, info


def read_small(path, limit):
    """The bytes of the regular file at path when it holds at most limit bytes, else None: a link, a
    FIFO, a device or a bigger file is never read."""
    opened = open_regular(path)
    if opened is None:
        return None
    f, info = opened
    with f:
        if info.st_size > limit:
            return None
        try:
            data = f.read(limit + 1)  # it may have grown since
        except OSError:
            return None
    return data if len(data) <= limit else None


def copy_file(src, dst, size):
    """Copy no more than the `size` bytes counted, should the file still grow."""
    while size > 0:
        chunk = src.read(min(size, 1 << 20))
        if not chunk:
            break
        dst.write(chunk)
        size -= len(chunk)


def copy_tree(source, target, skip=(), file_limit=None, total_limit=None, entry_limit=None):
    """Copy source's folders and regular files into target (an existing folder), following no links
    and leaving out sockets, FIFOs and devices, the names in skip at its top, and files over file_limit
    bytes; copies are the user's to rewrite, no one else's, and never setuid. Each folder is opened
    once and read by its descriptor, so a folder swapped for a link meanwhile is not followed. Returns
    (bytes copied, entries left out, complete): complete is False when the copy stopped short of
    total_limit bytes or entry_limit entries (what it copied until then stays)."""
    total = entries = skipped = 0
    try:
        top = os.open(source, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError:
        return 0, 1, True
    pending = [(top, target, True)]
    try:
        while pending:
            folder, into, at_top = pending.pop()
            try:
                with os.scandir(folder) as listing:
                    for entry in listing:
                        entries += 1
                        if entry_limit is not None and entries > entry_limit:
                            return total, skipped, False
                        if at_top and entry.name in skip:
                            continue
                        destination = os.path.join(into, entry.name)
                        try:
                            inner = os.open(entry.name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=folder)
                        except OSError:
                            inner = None  # not a folder (or one that cannot be opened)
                        if inner is not None:
                            pending.append((inner, destination, False))
                            os.mkdir(destination, 0o700)
                            continue
                        opened = open_regular(entry.name, dir_fd=folder)
                        if opened is None:  # a link, a pipe, a device, or gone
                            skipped += 1
                            continue
                        src, info = opened
                        with src:
                            if file_limit is not None and info.st_size > file_limit:
                                skipped += 1
                                continue
                            if total_limit is not None and total + info.st_size > total_limit:
                                return total, skipped, False
                            mode = stat.S_IMODE(info.st_mode) & 0o755 | 0o600
                            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
                            with os.fdopen(os.open(destination, flags, mode), "wb") as dst:
                                copy_file(src, dst, info.st_size)
                            total += info.st_size
            finally:
                os.close(folder)
    finally:
        for folder, _, _ in pending:
            os.close(folder)
    return total, skipped, True
