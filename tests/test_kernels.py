"""
Flash Attention 3 on Hopper, as the reference loads it (the `kernels` package): prepare.py fetches it
into the cache with the network; train.py loads it from there offline, in the sandbox too, where it is
read-only. The Hub cannot be reached here: the tests lay a kernel out in the cache the way the
`kernels` package stores one (a pure-Python build, so it loads on a CPU) and load it with the real
library.
"""

import json
import os
import subprocess
import sys
import textwrap

import pytest

from autoresearch import sandbox
from conftest import ROOT

pytest.importorskip("kernels")

FAKE_FA3 = textwrap.dedent("""\
    import types
    def flash_attn_func(q, k, v, causal=False, window_size=(-1, -1)):
        return (q + v) / 2
    flash_attn_interface = types.SimpleNamespace(flash_attn_func=flash_attn_func, name="flash attention 3")
    """)
BROKEN_FA3 = FAKE_FA3.replace("return (q + v) / 2", "return (q + v) / 2, None  # (out, lse): not train.py's")


def lay_out_kernel(cache, repo="varunneal/flash-attention-3", commit="0" * 40, code=FAKE_FA3):
    """A kernel in <cache>/kernels as the `kernels` package stores what it downloaded (revision main)."""
    folder = os.path.join(cache, "kernels", "kernels--" + repo.replace("/", "--"))
    build = os.path.join(folder, "snapshots", commit, "build", "torch-universal")
    os.makedirs(build)
    os.makedirs(os.path.join(folder, "refs"))
    with open(os.path.join(folder, "refs", "main"), "w") as f:
        f.write(commit)
    with open(os.path.join(build, "metadata.json"), "w") as f:
        json.dump({"id": "fa3", "name": "flash-attention-3", "version": 1, "license": "BSD-3-Clause",
                   "python-depends": [], "backend": {"type": "cpu"}}, f)
    with open(os.path.join(build, "__init__.py"), "w") as f:
        f.write(code)
    return os.path.join(cache, "kernels")


LOAD = "import prepare; fa3 = prepare.load_flash_attention_3(); print(fa3.name if fa3 else None)"


def python(code, cache):
    env = {**os.environ, "AUTORESEARCH_CACHE": str(cache), "AUTORESEARCH_PROFILE": "smoke"}
    env.pop("HF_HUB_OFFLINE", None)
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)


def test_flash_attention_3_loads_offline_from_the_cache_prepare_py_filled(tmp_path):
    lay_out_kernel(str(tmp_path))
    proc = python(LOAD, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "flash attention 3"


def test_a_kernel_that_does_not_run_as_train_py_calls_it_falls_back_saying_why(tmp_path):
    lay_out_kernel(str(tmp_path), code=BROKEN_FA3)
    proc = python(LOAD, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "None"
    assert "flash_attn_func returned tuple, not one (B, T, H, D) tensor" in proc.stderr


def test_without_the_kernel_in_the_cache_train_py_falls_back_saying_how_to_fetch_it(tmp_path):
    proc = python(LOAD, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "None"
    [line] = [line for line in proc.stderr.splitlines() if "Flash Attention 3" in line]
    assert "falling back" in line and "python prepare.py --kernels" in line


def test_prepare_py_fetches_no_kernel_on_a_machine_without_a_hopper_gpu(tmp_path):
    proc = python("import prepare; prepare.is_hopper = lambda: False; prepare.fetch_flash_attention_3()", tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "" and not os.path.exists(tmp_path / "kernels")


def test_prepare_py_kernels_fetches_only_the_kernel_and_says_when_there_is_nothing_to_fetch(tmp_path):
    proc = python("import prepare; prepare.is_hopper = lambda: False; prepare.main(['--kernels'])", tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [
        "Flash Attention 3 is for Hopper GPUs (H100, H200); this machine has none: nothing to fetch"]
    assert os.listdir(tmp_path) == []  # no profile prepared, no kernel fetched


def on_hopper_without_the_hub(code, cache):
    """code run as on a Hopper machine whose Hub cannot be reached."""
    return subprocess.run([sys.executable, "-c", "import prepare; prepare.is_hopper = lambda: True; " + code],
                          cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "AUTORESEARCH_CACHE": str(cache), "HF_ENDPOINT": "http://127.0.0.1:9",
                               "HF_HUB_ETAG_TIMEOUT": "2", "HF_HUB_DOWNLOAD_TIMEOUT": "2"})


def test_prepare_py_on_hopper_asks_the_hub_for_the_kernel_and_only_warns_when_it_cannot(tmp_path):
    """The download path as far as it goes without a network: the kernels package takes prepare.py's
    arguments (a revision, the publisher trusted) and the unreachable Hub is one warning line."""
    proc = on_hopper_without_the_hub("print(prepare.fetch_flash_attention_3())", tmp_path)
    assert proc.returncode == 0, proc.stderr
    warning, result = proc.stdout.splitlines()
    assert warning.startswith("warning: Flash Attention 3 could not be fetched (")
    assert "train.py will use flex_attention" in warning and "TypeError" not in warning
    assert result == "False"


def test_prepare_py_kernels_that_cannot_fetch_the_kernel_exits_1(tmp_path):
    proc = on_hopper_without_the_hub("prepare.main(['--kernels'])", tmp_path)
    assert proc.returncode == 1
    assert proc.stdout.startswith("warning: Flash Attention 3 could not be fetched (")


def test_prepare_py_kernels_with_a_profile_is_a_usage_error(tmp_path):
    proc = python("import prepare; prepare.main(['--kernels', '--profile', 'cpu'])", tmp_path)
    assert proc.returncode == 2
    assert "--kernels fetches the attention kernel only" in proc.stderr


SPEC = sandbox.Spec(train_py="", base_commit="0" * 40, profile="smoke")


def test_a_sandbox_on_a_gpu_machine_sees_the_kernels_read_only(tmp_path, monkeypatch):
    kernels = lay_out_kernel(str(tmp_path / "cache"))
    monkeypatch.setattr(sandbox, "has_gpu", lambda: True)
    argv, _ = sandbox.command(SPEC, str(tmp_path / "exp"), str(tmp_path / "cache" / "smoke"),
                              str(tmp_path / "handoff"), 5, sandboxed=True)
    assert ("--ro-bind", kernels, f"{sandbox.INSIDE_CACHE}/{sandbox.KERNELS}") in [
        tuple(argv[i:i + 3]) for i, arg in enumerate(argv) if arg == "--ro-bind"]
    assert argv.count(kernels) == 1  # bound once, read-only


def test_a_sandbox_on_a_machine_without_a_gpu_gets_no_kernels(tmp_path, monkeypatch):
    kernels = lay_out_kernel(str(tmp_path / "cache"))
    monkeypatch.setattr(sandbox, "has_gpu", lambda: False)
    argv, _ = sandbox.command(SPEC, str(tmp_path / "exp"), str(tmp_path / "cache" / "smoke"),
                              str(tmp_path / "handoff"), 5, sandboxed=True)
    assert kernels not in argv


@pytest.mark.skipif(sandbox.bwrap_problem() is not None, reason="needs a working bubblewrap sandbox")
def test_inside_the_sandbox_train_py_loads_the_kernel_and_cannot_change_it(tmp_path, monkeypatch, smoke_cache):
    """No network inside, yet FA3 loads; and a run cannot leave a kernel of its own for the next one."""
    cache = tmp_path / "cache"
    kernels = lay_out_kernel(str(cache))
    os.symlink(os.path.join(smoke_cache, "smoke"), cache / "smoke")
    folder, handoff = tmp_path / "exp", tmp_path / "handoff"
    folder.mkdir()
    handoff.mkdir()
    for name in sandbox.FIXED_FILES:
        (folder / name).write_bytes((ROOT / name).read_bytes())
    (folder / "train.py").write_text(textwrap.dedent("""\
        import glob, os, prepare
        print(prepare.load_flash_attention_3().name)
        for path in glob.glob(os.path.join(prepare.KERNELS_DIR, "**", "__init__.py"), recursive=True):
            try:
                with open(path, "w") as f:
                    f.write("flash_attn_interface = None  # planted by an experiment")
                print("changed", path)
            except OSError as e:
                print("refused", type(e).__name__)
        """))
    monkeypatch.setattr(sandbox, "has_gpu", lambda: True)
    argv, _ = sandbox.command(SPEC, str(folder), str(cache / "smoke"), str(handoff), 5, sandboxed=True)
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["flash attention 3", "refused OSError"]
    [init] = [os.path.join(d, f) for d, _, files in os.walk(kernels) for f in files if f == "__init__.py"]
    assert open(init).read() == FAKE_FA3

