"""Python bytecode for sandboxed runs, where the installation has none: compiled once by the harness,
read-only inside."""

import os
import subprocess
import sys

import pytest

from autoresearch import bytecode, sandbox

needs_bwrap = pytest.mark.skipif(sandbox.bwrap_problem() is not None,
                                 reason=f"needs a working bubblewrap sandbox ({sandbox.bwrap_problem()})")


@pytest.fixture
def no_bytecode_installed(tmp_path, monkeypatch):
    """An installation without bytecode, holding one package, `shipped`, whose source says 'compiled'."""
    site = tmp_path / "site"
    (site / "shipped").mkdir(parents=True)
    (site / "shipped" / "__init__.py").write_text("SAYS = 'compiled'\n")
    monkeypatch.setattr(bytecode, "installed_without_bytecode", lambda: True)
    monkeypatch.setattr(bytecode, "sources", lambda: [str(site / "shipped")])
    bytecode._compile.cache_clear()
    yield site
    bytecode._compile.cache_clear()


def sandboxed_import(site, folder):
    """`shipped` imported in a sandbox given the bytecode folder: (what it says, whether it could write there)."""
    code = ("import sys; sys.path.insert(0, %r); import shipped; print(shipped.SAYS)\n"
            "try:\n    open(%r + '/planted.pyc', 'wb')\nexcept OSError as e:\n    print(e.errno)") % (str(site), folder)
    env = sandbox.kept_environment()
    argv = sandbox.base_args() + ["--ro-bind", str(site), str(site)] + bytecode.sandbox_args(folder)
    argv += [arg for k, v in sorted(env.items()) for arg in ("--setenv", k, v)]
    proc = subprocess.run(sandbox.sealed(argv) + ["--", sys.executable, "-c", code], capture_output=True, text=True)
    return proc.stdout.split(), proc.stderr


@needs_bwrap
def test_the_harness_compiles_once_and_sandboxed_runs_read_the_bytecode_but_cannot_write_it(no_bytecode_installed, tmp_path):
    site = no_bytecode_installed
    folder = bytecode.prepared(tmp_path / "cache")
    assert folder == str(tmp_path / "cache" / bytecode.FOLDER)
    source = site / "shipped" / "__init__.py"
    # a source that changes but keeps its size and time is still read from the bytecode compiled for it:
    # proof that the sandbox runs the harness's bytecode, not the source
    stat = source.stat()
    source.write_text("SAYS = 'fromsrc!'\n")
    os.utime(source, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    said, errors = sandboxed_import(site, folder)
    assert said == ["compiled", "30"], errors  # EROFS: no run leaves bytecode for the next


def test_an_installation_with_its_own_bytecode_is_left_as_it_is(tmp_path):
    """pip compiles at install time (this test's own environment): no folder, no prefix."""
    assert not bytecode.installed_without_bytecode()
    assert bytecode.prepared(tmp_path) is None
    assert bytecode.sandbox_args(None) == []
    assert not (tmp_path / bytecode.FOLDER).exists()


def test_the_bytecode_folder_tracks_the_installation(no_bytecode_installed, tmp_path):
    """A package upgraded (new source) gets new bytecode at the next harness process; the old one stays unused."""
    site = no_bytecode_installed
    folder = bytecode.prepared(tmp_path)
    source = site / "shipped" / "__init__.py"
    before = source.stat().st_mtime
    source.write_text("SAYS = 'upgraded, longer'\n")
    os.utime(source, (before + 60, before + 60))  # installed a minute later
    bytecode._compile.cache_clear()  # a new harness process
    assert bytecode.prepared(tmp_path) == folder
    env = dict(os.environ, PYTHONPYCACHEPREFIX=folder, PYTHONDONTWRITEBYTECODE="1")
    proc = subprocess.run([sys.executable, "-c", f"import sys; sys.path.insert(0, {str(site)!r}); import shipped; "
                           "print(shipped.__cached__, shipped.SAYS)"], env=env, capture_output=True, text=True)
    cached, says = proc.stdout.split(" ", 1)
    assert cached.startswith(folder) and says.strip() == "upgraded, longer", proc.stderr
    header = open(cached, "rb").read(16)  # magic, flags, source mtime, source size: compiled from the new source
    assert int.from_bytes(header[12:16], "little") == source.stat().st_size
