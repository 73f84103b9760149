"""
Python bytecode for the sandboxed processes (experiments and trusted evaluators).

Inside the sandbox the Python installation is read-only and nothing writes bytecode
(PYTHONDONTWRITEBYTECODE). Where the installation came without it (uv installs none by default;
some images strip it), every experiment compiled torch, its compiler stack and the standard library
from source again: seconds of every start-up, and again at the first compilation and evaluation.

So where the installation lacks it, the harness compiles the bytecode of the standard library and of
the installed packages, once per installation, into `<cache>/bytecode` (compileall with a pycache
prefix: the installation is not touched), and every sandbox reads it from there, read-only. Only the
harness writes it, from the installed sources, in a folder only its user can open: a run cannot leave
code there for the next one. Python checks each file against its source (size and modification time),
so a package changed since is compiled from source until the next refresh, as before. An installation
that has its bytecode beside its sources is left as it is.
"""

import fcntl
import functools
import importlib.util
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import sysconfig
import threading

FOLDER = "bytecode"  # in the data cache ($AUTORESEARCH_CACHE)
# below a source folder, never imported by a run: test suites, torch's testing helpers, the standard
# library's GUI and installers
SKIP = r"[/\\](.*[/\\])?(tests?|idlelib|tkinter|turtledemo|ensurepip|lib2to3|testing[/\\]_internal)[/\\]"
_lock = threading.Lock()


def installed_without_bytecode(module="torch"):
    """True when `module`, as installed, has no compiled bytecode beside its source."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.origin or not spec.origin.endswith(".py"):
        return False
    return not os.path.exists(_beside(spec.origin))


def _beside(source):
    """Where Python keeps a source file's bytecode without a prefix: its folder's __pycache__."""
    folder, name = os.path.split(source)
    return os.path.join(folder, "__pycache__", f"{name[:-3]}.{sys.implementation.cache_tag}.pyc")


def sources():
    """The folders to compile: the standard library and the installed packages, as Python finds them
    (a mirrored path is looked up as the import sees it, symbolic links and all)."""
    paths = sysconfig.get_paths()
    found = [paths["stdlib"], paths["purelib"], paths["platlib"]]
    return sorted({os.path.abspath(p) for p in found if p and os.path.isdir(p)})


def prepared(cache_dir, exclude=()):
    """The bytecode folder for sandboxes, compiled or brought up to date, or None when the installation
    has its own bytecode (or the folder cannot be made: then every run compiles from source, as it did).
    exclude: folders whose Python must not be readable there (what the sandbox hides)."""
    if not installed_without_bytecode():
        return None
    with _lock:
        return _compile(os.path.join(os.path.abspath(cache_dir), FOLDER), tuple(exclude))


@functools.lru_cache(maxsize=None)
def _compile(folder, exclude):
    """Once per harness process and folder, and only when the installation changed since the last time
    (its stamp): compileall then recompiles what changed. Harness processes sharing the cache (a
    swarm's workers) take turns through a lock file."""
    roots = sources()
    stamp = json.dumps([sys.version, list(exclude), *[[p, os.stat(p).st_mtime_ns] for p in roots]])
    stamp_file = os.path.join(folder, "stamp.json")
    try:
        os.makedirs(folder, mode=0o700, exist_ok=True)
        info = os.stat(folder)
        if info.st_uid != os.getuid() or info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            raise OSError(f"{folder} is not this user's alone")
        with open(folder + ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if _read(stamp_file) == stamp:
                return folder
            print(f"compiling Python's bytecode for sandboxed runs into {folder} (the installation has "
                  "none; once per installation)", file=sys.stderr, flush=True)
            skip = "|".join(re.escape(root) + SKIP for root in roots)
            # -I: no PYTHON* variables (an inherited PYTHONOPTIMIZE would write files no run reads)
            subprocess.run([sys.executable, "-I", "-X", f"pycache_prefix={folder}", "-m", "compileall", "-q",
                            "-j", "0", "-x", skip, *roots], capture_output=True, timeout=1800)
            for hidden in _mirrors(folder, roots, exclude):
                shutil.rmtree(hidden, ignore_errors=True)
            # compileall exits 1 when any file does not compile (a package's Python 2 example, say):
            # the rest is there. A source folder with no mirror at all means it wrote nothing
            if not all(os.path.isdir(folder + root) for root in roots):
                raise OSError("compileall wrote nothing there (disk full? read-only?)")
            with open(stamp_file + ".tmp", "w") as f:
                f.write(stamp)
            os.replace(stamp_file + ".tmp", stamp_file)
            return folder
    except (OSError, subprocess.SubprocessError) as e:
        print(f"warning: Python's bytecode could not be compiled for sandboxed runs ({e}); they compile it "
              "from source", file=sys.stderr)
        return None


def _mirrors(folder, roots, exclude):
    """Where the excluded folders' bytecode would be in the folder, by every path that leads to them."""
    for path in exclude:
        real = os.path.realpath(path)
        yield folder + real
        for root in roots:
            if real.startswith(os.path.realpath(root) + os.sep):
                yield folder + os.path.join(root, os.path.relpath(real, os.path.realpath(root)))


def _read(path):
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


def sandbox_args(folder, inside=None):
    """bubblewrap arguments that give a sandboxed Python, and the processes it starts, the bytecode
    folder, read-only, at `inside` (default: where it is; the sources' paths name the files in it)."""
    if not folder:
        return []
    inside = inside or folder
    return ["--ro-bind", folder, inside, "--setenv", "PYTHONPYCACHEPREFIX", inside]


def python_args(folder):
    """Interpreter options that read the folder (also under `python -I`, which ignores PYTHON* variables)."""
    return ["-X", f"pycache_prefix={folder}"] if folder else []
