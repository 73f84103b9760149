"""
What persists from one experiment to the next: torch.compile's caches (inductor's compiled graphs,
Triton's kernels and autotuning results). On a GPU a cold compile costs about a minute per experiment;
a warm cache costs seconds.

A cache is a channel between experiments, so what may persist is decided here, not by train.py:

- every experiment gets a fresh, private, writable copy of its campaign's *adopted* cache, and nothing
  else: what it writes there reaches no other experiment unless it is adopted;
- a cache is adopted only from a kept run of the campaign's own train.py, the base commit's, which a
  person committed (runner.adopts_compile_cache): the baseline. A train.py an agent wrote could leave
  anything there under a cache file's name (its weights, for the next runs to go on training from;
  kernels that sabotage them), and no check of the files could tell. Every other run's writes are
  thrown away with its workspace. The price: a run whose model differs from the baseline's compiles
  its own graphs cold;
- adopting copies regular files and folders only (no links, devices or sockets: a link planted there
  would make the harness copy a file of its choosing), and gives up on a cache over MAX_BYTES (the
  one adopted before stays, and an event in the ledger says so);
- the trusted evaluator keeps a cache of its own, which only it (and the harness) writes; what it
  compiles is keyed by the program's graph, which the evaluator has checked (modelfile.check_program).
  Beside it, the program of the campaign's last kept run (PROGRAM): the next evaluator checks it like
  any other and compiles it while its experiment trains (evaluator.prepare_ahead).

Inside the sandbox the workspace is INSIDE, named by TORCHINDUCTOR_CACHE_DIR and TRITON_CACHE_DIR.
"""

import contextlib
import os
import shutil
import stat
import subprocess
import tempfile

INSIDE = "/autoresearch/compile-cache"
PROGRAM = "program.pt2"  # in the evaluator's cache: the program of the campaign's last kept run


def _max_bytes():
    try:
        return int(float(os.environ.get("AUTORESEARCH_COMPILE_CACHE_MAX", 4 << 30)))
    except ValueError:
        return 4 << 30


MAX_BYTES = _max_bytes()  # bytes a cache may hold (AUTORESEARCH_COMPILE_CACHE_MAX; 4 GiB when unset or not a number)


def environment(path):
    """The variables that point torch.compile's caches at `path`."""
    return {"TORCHINDUCTOR_CACHE_DIR": path, "TRITON_CACHE_DIR": os.path.join(path, "triton")}


class CompileCaches:
    """The compile caches of one campaign, in `root` (.autoresearch/compile-cache/<tag>)."""

    def __init__(self, root):
        self.root = root
        self.adopted = os.path.join(root, "train")       # from the last kept experiment
        self.evaluator = os.path.join(root, "evaluator")  # the trusted evaluator's own

    def workspace(self):
        """A fresh folder holding a copy of the adopted cache: one experiment's to write (a private
        folder: remove it with remove_private)."""
        path = private_folder("autoresearch-compile-")
        if os.path.isdir(self.adopted):
            try:
                shutil.copytree(self.adopted, path, dirs_exist_ok=True, symlinks=True)
            except (OSError, shutil.Error):  # a full disk: the run compiles cold, that is all
                remove_private(path)
                path = private_folder("autoresearch-compile-")
        return path

    def settle(self, workspace, adopt):
        """Adopt the workspace as the campaign's cache (when `adopt`), then remove it. Returns a line for
        the ledger's events when the cache was adopted or refused, else None. A cache that cannot be
        adopted (too big, a full disk) leaves the adopted one as it was: it costs a compile, nothing else."""
        try:
            return self._adopt(workspace) if adopt else None
        finally:
            remove_private(workspace)

    def _adopt(self, workspace):
        staging = None
        try:
            os.makedirs(self.root, exist_ok=True)
            staging = tempfile.mkdtemp(prefix=".train-", dir=self.root)
            copied, skipped = copy_regular(workspace, staging, MAX_BYTES)
            if copied is None:
                return f"compile cache not adopted: over {MAX_BYTES:,} bytes"
            old = self.adopted + ".old"
            shutil.rmtree(old, ignore_errors=True)
            if os.path.isdir(self.adopted):
                os.rename(self.adopted, old)
            os.rename(staging, self.adopted)
            staging = None
            shutil.rmtree(old, ignore_errors=True)
        except OSError as e:
            return f"compile cache not adopted: {e}"
        finally:
            if staging:
                shutil.rmtree(staging, ignore_errors=True)
        note = f" ({skipped} links or special files left out)" if skipped else ""
        return f"compile cache adopted: {copied / 2**20:.1f} MB{note}"

    def evaluator_cache(self):
        """The trusted evaluator's cache folder."""
        os.makedirs(self.evaluator, exist_ok=True)
        return self.evaluator

    def trim_evaluator_cache(self):
        """The evaluator's cache grows with every new model: past MAX_BYTES it starts again empty.
        Only while no evaluator runs (a campaign's start, or between the runs of a loop)."""
        if folder_bytes(self.evaluator) > MAX_BYTES:
            remove(self.evaluator)
        elif os.path.isdir(self.evaluator):  # programs stashed by runs that never settled (a crash)
            for name in os.listdir(self.evaluator):
                if name.startswith(STASHED):
                    discard_file(os.path.join(self.evaluator, name))


STASHED = ".candidate-"  # a program evaluated, until its run is kept (it becomes PROGRAM) or not (removed)


def stash_program(folder, path):
    """Move the program at `path`, which an evaluator has just evaluated, into the evaluator cache `folder`
    under a name of its own (copied when on another disk); its path there, or None on a full disk or
    for a program over a quarter of MAX_BYTES."""
    stashed = None
    try:
        if os.path.getsize(path) > MAX_BYTES // 4:  # it would crowd the compiled code out of the cache
            return None
        fd, stashed = tempfile.mkstemp(prefix=STASHED, suffix=".pt2", dir=folder)
        os.close(fd)
        try:
            os.replace(path, stashed)
        except OSError:  # another disk
            shutil.copyfile(path, stashed)
        return stashed
    except OSError:  # the next evaluator compiles when its model comes, that is all
        discard_file(stashed)
        return None


def settle_program(stashed, kept):
    """A stashed program (stash_program) becomes its folder's PROGRAM when its run was kept: the model
    the campaign's next experiments start from, whose graphs they most likely share. Else it goes."""
    if not stashed:
        return
    if kept:
        try:
            os.replace(stashed, os.path.join(os.path.dirname(stashed), PROGRAM))
            return
        except OSError:
            pass
    discard_file(stashed)


def discard_file(path):
    if path:
        with contextlib.suppress(OSError):
            os.unlink(path)


def remembered_program(folder):
    """The path of the evaluator cache `folder`'s PROGRAM when it holds one (a regular file), else None."""
    path = os.path.join(folder, PROGRAM)
    try:
        return path if stat.S_ISREG(os.lstat(path).st_mode) else None
    except OSError:
        return None


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
    """Delete a folder an experiment wrote, whatever it made of it (a tree too deep for Python's
    recursion, folders without permissions): never raises."""
    try:
        shutil.rmtree(path)
    except FileNotFoundError:
        pass
    except Exception:
        subprocess.run(["chmod", "-R", "u+rwX", path], capture_output=True)
        subprocess.run(["rm", "-rf", "--one-file-system", "--", path], capture_output=True)


def folder_bytes(path):
    total = 0
    for folder, _, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(folder, name)).st_size
            except OSError:
                pass
    return total


def copy_regular(source, target, limit):
    """Copy the regular files and folders under `source` into `target`, following no links.
    Returns (bytes copied, entries left out), or (None, None) once more than `limit` bytes."""
    total, skipped = 0, 0
    for folder, dirs, files in os.walk(source, followlinks=False):
        relative = os.path.relpath(folder, source)
        here = os.path.join(target, relative) if relative != "." else target
        for name in list(dirs):
            if os.path.islink(os.path.join(folder, name)):
                dirs.remove(name)
                skipped += 1
            else:
                os.makedirs(os.path.join(here, name), exist_ok=True)
        for name in files:
            opened = open_regular(os.path.join(folder, name))
            if opened is None:  # a link, a pipe, a device, or gone
                skipped += 1
                continue
            src, info = opened
            with src:
                total += info.st_size
                if total > limit:
                    return None, None
                with open(os.path.join(here, name), "wb") as dst:
                    copy_file(src, dst, info.st_size)
    return total, skipped


def open_regular(path):
    """(the file at path opened for reading, its fstat) when it is a regular file, else None. Opened
    once, without following a link or waiting on a pipe, and checked as opened: a check of the path
    and then an open of it would open whatever a sandboxed process swapped in between."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
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


def copy_file(src, dst, size):
    """Copy no more than the `size` bytes counted, should the file still grow."""
    while size > 0:
        chunk = src.read(min(size, 1 << 20))
        if not chunk:
            break
        dst.write(chunk)
        size -= len(chunk)
