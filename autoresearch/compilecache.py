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
import tempfile

from autoresearch import hostfiles

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
        folder: remove it with hostfiles.remove_private)."""
        path = hostfiles.private_folder("autoresearch-compile-")
        if os.path.isdir(self.adopted):
            try:
                shutil.copytree(self.adopted, path, dirs_exist_ok=True, symlinks=True)
            except (OSError, shutil.Error):  # a full disk: the run compiles cold, that is all
                hostfiles.remove_private(path)
                path = hostfiles.private_folder("autoresearch-compile-")
        return path

    def settle(self, workspace, adopt):
        """Adopt the workspace as the campaign's cache (when `adopt`), then remove it. Returns a line for
        the ledger's events when the cache was adopted or refused, else None. A cache that cannot be
        adopted (too big, a full disk) leaves the adopted one as it was: it costs a compile, nothing else."""
        try:
            return self._adopt(workspace) if adopt else None
        finally:
            hostfiles.remove_private(workspace)

    def _adopt(self, workspace):
        staging = None
        try:
            os.makedirs(self.root, exist_ok=True)
            staging = tempfile.mkdtemp(prefix=".train-", dir=self.root)
            copied, skipped, complete = hostfiles.copy_tree(workspace, staging, total_limit=MAX_BYTES)
            if not complete:
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
            hostfiles.remove(self.evaluator)
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


def folder_bytes(path):
    total = 0
    for folder, _, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(folder, name)).st_size
            except OSError:
                pass
    return total
