"""The built wheel (what `pip install .` and `pipx install` give): complete, and nothing installed at
the top of site-packages that belongs to a checkout."""

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile

import pytest

from conftest import ROOT


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    """The project's wheel, built offline from a copy of the checkout (so no build/ lands in it)."""
    tmp = tmp_path_factory.mktemp("wheel")
    source = tmp / "source"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".git", ".venv", "build", "*.egg-info",
                                                                 "__pycache__", ".pytest_cache", "reports"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    str(source), "-w", str(tmp / "dist")], check=True, capture_output=True, text=True)
    [built] = (tmp / "dist").glob("autoresearch-*.whl")
    return built


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory):
    """A fresh virtual environment holding only the wheel (its dependencies are seen through a .pth
    file naming this interpreter's site-packages): returns its bin folder."""
    venv = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    where = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    purelib = subprocess.run([venv / "bin" / "python", "-c", where], check=True, capture_output=True,
                             text=True).stdout.strip()
    with open(os.path.join(purelib, "dependencies.pth"), "w") as f:
        f.write(sysconfig.get_paths()["purelib"] + "\n")
    # without conftest's PYTHONPATH: pip would find the checkout's own metadata (an editable install's
    # autoresearch.egg-info) there, call the package installed already, and install nothing
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "-q",
                    "--no-deps", "--no-index", str(wheel)], check=True, capture_output=True, text=True, env=env)
    return venv / "bin"


def outside_the_checkout(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # conftest points it at the checkout
    return {"env": env, "cwd": tmp_path, "capture_output": True, "text": True}


def test_wheel_holds_every_package_of_the_harness(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    modules = {p.relative_to(ROOT).as_posix() for p in (ROOT / "autoresearch").rglob("*.py")}
    assert "autoresearch/proposers/search.py" in modules and modules <= names


def test_wheel_installs_no_top_level_prepare_or_constants(wheel):
    """A campaign's rules are its checkout's prepare.py and constants.py; an installed copy would
    shadow them for any `import prepare` that does not put the checkout first."""
    top_level = {name.split("/")[0] for name in zipfile.ZipFile(wheel).namelist()}
    assert "prepare.py" not in top_level and "constants.py" not in top_level


def test_installed_wheel_runs_the_cli(installed, tmp_path):
    run = outside_the_checkout(tmp_path)
    r = subprocess.run([installed / "autoresearch", "--help"], **run)
    assert r.returncode == 0, r.stderr
    for command in ("run", "loop", "swarm", "log", "report", "status"):
        assert command in r.stdout
    r = subprocess.run([installed / "autoresearch", "--version"], **run)
    assert r.returncode == 0 and r.stdout.strip() == "autoresearch 0.1.0", r.stderr
    r = subprocess.run([installed / "autoresearch", "loop", "--help"], **run)
    assert r.returncode == 0 and "--proposer" in r.stdout, r.stderr
    r = subprocess.run([installed / "python", "-c", "import autoresearch.proposers as p; print(p.__file__)"], **run)
    assert r.returncode == 0 and r.stdout.startswith(str(installed.parent)), r.stderr
