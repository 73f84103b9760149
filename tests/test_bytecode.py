"""Python bytecode for sandboxed runs, where the installation has none: compiled once by the harness,
read-only inside."""

import os
import py_compile
import subprocess
import sys

import pytest

from autoresearch import bytecode, evaluator, sandbox

needs_bwrap = pytest.mark.skipif(sandbox.bwrap_problem() is not None,
                                 reason=f"needs a working bubblewrap sandbox ({sandbox.bwrap_problem()})")


@pytest.fixture
def no_bytecode_installed(tmp_path, monkeypatch):
    """An installation without bytecode: one source folder holding `shipped` (its source says
    'compiled') and `shipped/data`, text the sandbox hides."""
    site = tmp_path / "tests" / "site"  # test suites below a source folder are skipped, not above it
    (site / "shipped" / "data").mkdir(parents=True)
    (site / "shipped" / "tests").mkdir()
    (site / "shipped" / "tests" / "test_shipped.py").write_text("X = 1\n")
    (site / "shipped" / "__init__.py").write_text("SAYS = 'compiled'\n")
    (site / "shipped" / "data" / "speech.py").write_text("TEXT = 'the validation text'\n")
    monkeypatch.setattr(bytecode, "installed_without_bytecode", lambda: True)
    monkeypatch.setattr(bytecode, "sources", lambda: [str(site)])
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


def keep_size_and_time(path, text):
    """Change a source without changing what Python checks a bytecode file against (size, mtime)."""
    stat = path.stat()
    path.write_text(text)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))


@needs_bwrap
def test_the_harness_compiles_once_and_sandboxed_runs_read_the_bytecode_but_cannot_write_it(no_bytecode_installed, tmp_path):
    site = no_bytecode_installed
    folder = bytecode.prepared(tmp_path / "cache")
    assert folder == str(tmp_path / "cache" / bytecode.FOLDER)
    # a source changed behind Python's back is still read from the bytecode compiled for it: proof
    # that the sandbox runs the harness's bytecode, not the source
    keep_size_and_time(site / "shipped" / "__init__.py", "SAYS = 'fromsrc!'\n")
    said, errors = sandboxed_import(site, folder)
    assert said == ["compiled", "30"], errors  # EROFS: no run leaves bytecode for the next


def test_the_evaluator_reads_the_bytecode_though_python_runs_isolated(no_bytecode_installed, tmp_path):
    """`python -I` ignores PYTHONPYCACHEPREFIX: the evaluator is told with -X pycache_prefix."""
    site = no_bytecode_installed
    folder = bytecode.prepared(tmp_path)
    keep_size_and_time(site / "shipped" / "__init__.py", "SAYS = 'fromsrc!'\n")
    env = dict(os.environ, PYTHONPYCACHEPREFIX="/nonexistent")
    code = f"import sys; sys.path.insert(0, {str(site)!r}); import shipped; print(shipped.SAYS)"
    proc = subprocess.run([sys.executable, "-I", *bytecode.python_args(folder), "-c", code], env=env,
                          capture_output=True, text=True)
    assert proc.stdout.strip() == "compiled", proc.stderr


def test_the_evaluators_sandbox_is_given_the_bytecode(no_bytecode_installed, tmp_path, monkeypatch):
    folder = sandbox.python_bytecode(tmp_path / "cache")  # compiled before Popen is replaced
    (tmp_path / "cache" / "smoke").mkdir(parents=True)
    started = []
    monkeypatch.setattr(evaluator.subprocess, "Popen", lambda argv, **kw: started.append(argv))
    monkeypatch.setattr(sandbox, "base_args", lambda: ["bwrap"])
    evaluator.Evaluator(str(tmp_path), str(tmp_path), "smoke", str(tmp_path / "cache"), sandboxed=True)
    argv = started[0]
    assert argv[argv.index("--") + 1:][:4] == [sys.executable, "-I", "-X", f"pycache_prefix={folder}"]
    assert ["--ro-bind", folder, folder] == argv[argv.index(folder) - 1:argv.index(folder) + 2]


def test_what_the_sandbox_hides_is_never_compiled_into_the_folder(no_bytecode_installed, tmp_path):
    site = no_bytecode_installed
    folder = bytecode.prepared(tmp_path, exclude=[str(site / "shipped" / "data")])
    mirror = folder + str(site)
    compiled = sorted(name.split(".")[0] for _, _, names in os.walk(mirror) for name in names if name.endswith(".pyc"))
    assert compiled == ["__init__"]  # not speech.py, nor the package's own test suite


def test_a_folder_others_can_write_to_is_not_used(no_bytecode_installed, tmp_path, capsys):
    folder = bytecode.prepared(tmp_path)
    os.chmod(folder, 0o777)
    bytecode._compile.cache_clear()  # the next harness process
    assert bytecode.prepared(tmp_path) is None
    assert "not this user's alone" in capsys.readouterr().err


def test_a_folder_that_cannot_be_written_leaves_runs_compiling_from_source(no_bytecode_installed, tmp_path, capsys):
    (tmp_path / bytecode.FOLDER).write_text("a file where the folder should be")
    assert bytecode.prepared(tmp_path) is None
    assert "could not be compiled for sandboxed runs" in capsys.readouterr().err


def test_an_installation_is_without_bytecode_until_its_sources_are_compiled_beside_them(tmp_path, monkeypatch):
    (tmp_path / "fresh").mkdir()
    (tmp_path / "fresh" / "__init__.py").write_text("X = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert bytecode.installed_without_bytecode("fresh")
    py_compile.compile(str(tmp_path / "fresh" / "__init__.py"), cfile=bytecode._beside(str(tmp_path / "fresh" / "__init__.py")))
    assert not bytecode.installed_without_bytecode("fresh")


def test_an_installation_with_its_own_bytecode_is_left_as_it_is(tmp_path, monkeypatch):
    monkeypatch.setattr(bytecode, "installed_without_bytecode", lambda: False)
    assert bytecode.prepared(tmp_path) is None
    assert bytecode.sandbox_args(None) == bytecode.python_args(None) == []
    assert not (tmp_path / bytecode.FOLDER).exists()


def test_the_bytecode_folder_tracks_the_installation(no_bytecode_installed, tmp_path):
    """A package installed later gets its bytecode at the next harness process."""
    site = no_bytecode_installed
    folder = bytecode.prepared(tmp_path)
    (site / "later.py").write_text("SAYS = 'installed later'\n")
    bytecode._compile.cache_clear()  # a new harness process
    assert bytecode.prepared(tmp_path) == folder
    assert os.path.exists(folder + str(site / f"later.{sys.implementation.cache_tag}.pyc"))


@needs_bwrap
def test_the_bytecode_folder_shows_a_run_nothing_else_of_the_data_cache(no_bytecode_installed, tmp_path):
    """The folder is bound at its own path, inside the data cache: the validation rows beside it stay out."""
    cache = tmp_path / "cache"
    (cache / "smoke").mkdir(parents=True)
    (cache / "smoke" / "val_rows.npy").write_bytes(b"the answers")
    folder = bytecode.prepared(cache)
    code = f"import os; print(sorted(os.listdir({str(cache)!r})), os.path.exists({str(cache / 'smoke')!r}))"
    env = sandbox.kept_environment()
    argv = sandbox.base_args() + bytecode.sandbox_args(folder)
    argv += [arg for k, v in sorted(env.items()) for arg in ("--setenv", k, v)]
    proc = subprocess.run(sandbox.sealed(argv) + ["--", sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.stdout.split() == ["['bytecode']", "False"], proc.stderr
