"""
What persists between the experiments of a campaign: torch.compile's caches (compilecache.py).

Every experiment writes to a fresh, private copy of the campaign's adopted cache; that copy becomes
the campaign's cache only when the experiment is a kept run of the campaign's own train.py (the
baseline), and then only its regular files and folders, up to compilecache.MAX_BYTES. Inside the sandbox the copy is compilecache.INSIDE, named by
TORCHINDUCTOR_CACHE_DIR and TRITON_CACHE_DIR.

The unit tests need no training; the runner's decision is tested with the printed-metric stand-in
(unsandboxed, no training); the last test runs real smoke-profile experiments through the harness
(runner.run_experiment, sandboxed, the real train.py) and checks that a discarded or crashed run's
writes reach no later run while the baseline's do.
"""

import errno
import json
import os
import subprocess
import tempfile
import textwrap
import threading
from pathlib import Path

import pytest

from autoresearch import compilecache, hostfiles, runner, sandbox
from autoresearch.ledger import Ledger
from conftest import git, make_repo
from test_runner import fake_train

ROOT = Path(__file__).resolve().parents[1]
REAL_TRAIN = (ROOT / "train.py").read_text()
SECRET = "top-secret-content-of-a-file-outside-the-cache"

needs_bwrap = pytest.mark.skipif(sandbox.bwrap_problem() is not None,
                                 reason=f"needs a working bubblewrap sandbox ({sandbox.bwrap_problem()})")


# -- helpers ---------------------------------------------------------------------------------------
def write(root, files):
    """Write {relative path: text} under root (folders as needed)."""
    for relative, text in files.items():
        path = Path(root) / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def tree(root):
    """Everything under root, links not followed: {relative path: text of a regular file,
    "<link to ...>" for a link, "<dir>" for a folder, "<special>" for anything else}."""
    found = {}
    for folder, dirs, files in os.walk(root, followlinks=False):
        for name in dirs + files:
            path = os.path.join(folder, name)
            relative = os.path.relpath(path, root)
            if os.path.islink(path):
                found[relative] = f"<link to {os.readlink(path)}>"
            elif os.path.isdir(path):
                found[relative] = "<dir>"
            elif os.path.isfile(path):
                found[relative] = Path(path).read_text(errors="replace")
            else:
                found[relative] = "<special>"
    return found


def all_bytes(root):
    """The bytes of every regular file under root, links not followed."""
    data = b""
    for folder, _, files in os.walk(root, followlinks=False):
        for name in files:
            path = os.path.join(folder, name)
            if os.path.isfile(path) and not os.path.islink(path):
                data += Path(path).read_bytes()
    return data


@pytest.fixture
def temp(tmp_path, monkeypatch):
    """The folder tempfile makes its folders in (workspaces included), empty, private to the test."""
    folder = tmp_path / "tmp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


@pytest.fixture
def caches(tmp_path, temp):
    """A campaign's compile caches in a folder of the test's own; workspaces go under `temp`."""
    return compilecache.CompileCaches(str(tmp_path / "compile-cache" / "t"))


@pytest.fixture
def secret(tmp_path):
    """A file outside every cache that a hostile experiment would like the harness to copy."""
    path = tmp_path / "outside" / "secret.txt"
    path.parent.mkdir()
    path.write_text(SECRET)
    return path


def settle_within(caches, workspace, seconds=20):
    """caches.settle(workspace, adopt=True), failing the test if it hangs (e.g. on a FIFO)."""
    result = {}
    worker = threading.Thread(target=lambda: result.update(line=caches.settle(workspace, adopt=True)), daemon=True)
    worker.start()
    worker.join(seconds)
    assert not worker.is_alive(), f"settle did not return within {seconds} s"
    return result["line"]


# -- a workspace -----------------------------------------------------------------------------------
def test_a_campaign_without_an_adopted_cache_gives_an_empty_workspace(caches, temp):
    workspace = caches.workspace()
    assert os.path.isdir(workspace) and os.listdir(workspace) == []
    assert Path(workspace).parent.parent == temp


def test_a_workspace_sits_in_a_folder_only_the_harnesss_user_can_open(caches):
    """Run by root, a run is the host's root inside: it can open its workspace to all and leave a
    setuid program there; the folder around it keeps every other user out, and goes with it."""
    workspace = caches.workspace()
    assert os.stat(os.path.dirname(workspace)).st_mode & 0o777 == 0o700
    os.chmod(workspace, 0o777)  # what the run can do to its own folder
    caches.settle(workspace, adopt=False)
    assert not os.path.exists(os.path.dirname(workspace))


def test_a_workspace_starts_as_a_copy_of_the_adopted_cache(caches):
    write(caches.adopted, {"fxgraph/ab/entry": "graph", "triton/kernel.json": "{}", "top": "t"})
    workspace = caches.workspace()
    assert workspace != caches.adopted
    assert tree(workspace) == tree(caches.adopted)


def test_writing_to_a_workspace_does_not_change_the_adopted_cache(caches):
    write(caches.adopted, {"fxgraph/ab/entry": "graph", "keep-me": "kept"})
    before = tree(caches.adopted)
    workspace = caches.workspace()
    write(workspace, {"fxgraph/ab/entry": "overwritten", "new/file": "new"})
    os.remove(os.path.join(workspace, "keep-me"))
    assert tree(caches.adopted) == before


def test_each_workspace_is_a_folder_of_its_own(caches):
    first, second = caches.workspace(), caches.workspace()
    assert first != second
    write(first, {"only-in-first": "1"})
    assert tree(second) == {}


# -- settling: adopt or throw away -----------------------------------------------------------------
def test_settle_without_adopting_throws_the_workspace_away_and_keeps_the_adopted_cache(caches):
    write(caches.adopted, {"fxgraph/entry": "from the last kept run"})
    before = tree(caches.adopted)
    workspace = caches.workspace()
    write(workspace, {"fxgraph/entry": "poison", "planted.py": "import os"})
    assert caches.settle(workspace, adopt=False) is None
    assert not os.path.exists(workspace)
    assert tree(caches.adopted) == before


def test_settle_without_adopting_creates_no_adopted_cache(caches):
    workspace = caches.workspace()
    write(workspace, {"entry": "poison"})
    assert caches.settle(workspace, adopt=False) is None
    assert not os.path.exists(caches.adopted)


def test_settle_adopting_replaces_the_adopted_cache_with_the_workspaces_files(caches):
    write(caches.adopted, {"old/entry": "old", "stale": "gone after adoption"})
    workspace = caches.workspace()
    os.remove(os.path.join(workspace, "stale"))
    write(workspace, {"old/entry": "updated", "fxgraph/xy/new": "new", "triton/k/kernel.bin": "k"})
    expected = tree(workspace)
    line = caches.settle(workspace, adopt=True)
    assert line.startswith("compile cache adopted: ") and "MB" in line
    assert tree(caches.adopted) == expected
    assert not os.path.exists(workspace)


def test_the_first_adoption_creates_the_campaign_cache(caches):
    assert not os.path.exists(caches.root)
    workspace = caches.workspace()
    write(workspace, {"fxgraph/entry": "first"})
    caches.settle(workspace, adopt=True)
    assert tree(caches.adopted) == {"fxgraph": "<dir>", "fxgraph/entry": "first"}


def test_adoption_leaves_no_staging_or_old_copy_behind(caches):
    for generation in ("first", "second"):
        workspace = caches.workspace()
        write(workspace, {"entry": generation})
        caches.settle(workspace, adopt=True)
    assert os.listdir(caches.root) == ["train"]
    assert tree(caches.adopted) == {"entry": "second"}


def disk_full_after(monkeypatch, files):
    """Copying a file fails with ENOSPC once `files` files have been copied."""
    copied, copy = [], hostfiles.copy_file

    def copy_file(*args):
        if len(copied) >= files:
            raise OSError(errno.ENOSPC, "No space left on device")
        copied.append(args)
        return copy(*args)
    monkeypatch.setattr(hostfiles, "copy_file", copy_file)


def test_a_failed_adoption_keeps_the_previous_cache_and_removes_the_workspace(caches, monkeypatch):
    write(caches.adopted, {"entry": "previous"})
    workspace = caches.workspace()
    write(workspace, {"a": "1", "b": "2", "c": "3"})
    disk_full_after(monkeypatch, 1)
    assert caches.settle(workspace, adopt=True).startswith("compile cache not adopted: ")
    assert tree(caches.adopted) == {"entry": "previous"}
    assert not os.path.exists(workspace)


def test_a_failed_adoption_leaves_no_partial_copy_behind(caches, monkeypatch):
    write(caches.adopted, {"entry": "previous"})
    workspace = caches.workspace()
    write(workspace, {"a": "1", "b": "2", "c": "3"})
    disk_full_after(monkeypatch, 1)
    caches.settle(workspace, adopt=True)
    assert os.listdir(caches.root) == ["train"]


# -- what adoption copies: regular files and folders only ------------------------------------------
def test_adoption_leaves_out_a_link_to_a_file_outside(caches, secret):
    workspace = caches.workspace()
    write(workspace, {"fxgraph/entry": "honest"})
    os.symlink(secret, os.path.join(workspace, "fxgraph", "stolen"))
    os.symlink(os.path.relpath(secret, workspace), os.path.join(workspace, "stolen-relative"))
    line = caches.settle(workspace, adopt=True)
    assert tree(caches.adopted) == {"fxgraph": "<dir>", "fxgraph/entry": "honest"}
    assert SECRET.encode() not in all_bytes(caches.adopted)
    assert "2 links or special files left out" in line


def test_adoption_leaves_out_a_link_to_a_folder_outside(caches, secret):
    workspace = caches.workspace()
    write(workspace, {"entry": "honest"})
    os.symlink(secret.parent, os.path.join(workspace, "outside"))
    line = caches.settle(workspace, adopt=True)
    assert tree(caches.adopted) == {"entry": "honest"}
    assert SECRET.encode() not in all_bytes(caches.adopted)
    assert "1 links or special files left out" in line


def test_adoption_leaves_out_a_dangling_link(caches):
    workspace = caches.workspace()
    write(workspace, {"entry": "honest"})
    os.symlink("/nonexistent/anywhere", os.path.join(workspace, "dangling"))
    line = caches.settle(workspace, adopt=True)
    assert tree(caches.adopted) == {"entry": "honest"}
    assert "1 links or special files left out" in line


def test_adoption_leaves_out_a_fifo_without_waiting_on_it(caches):
    workspace = caches.workspace()
    write(workspace, {"triton/entry": "honest"})
    os.mkfifo(os.path.join(workspace, "triton", "pipe"))
    line = settle_within(caches, workspace)
    assert tree(caches.adopted) == {"triton": "<dir>", "triton/entry": "honest"}
    assert "1 links or special files left out" in line


def test_the_adoption_line_counts_everything_left_out(caches, secret):
    workspace = caches.workspace()
    write(workspace, {"a/entry": "honest"})
    os.symlink(secret, os.path.join(workspace, "a", "file-link"))
    os.symlink(secret.parent, os.path.join(workspace, "dir-link"))
    os.mkfifo(os.path.join(workspace, "a", "pipe"))
    line = settle_within(caches, workspace)
    assert line.startswith("compile cache adopted: ")
    assert line.endswith("(3 links or special files left out)")


def test_a_clean_adoption_line_mentions_nothing_left_out(caches):
    workspace = caches.workspace()
    write(workspace, {"entry": "honest"})
    assert caches.settle(workspace, adopt=True) == "compile cache adopted: 0.0 MB"


# -- the byte cap ----------------------------------------------------------------------------------
def test_a_workspace_over_the_byte_cap_is_not_adopted_and_the_previous_cache_stays(caches, monkeypatch):
    write(caches.adopted, {"entry": "previous"})
    monkeypatch.setattr(compilecache, "MAX_BYTES", 100)
    workspace = caches.workspace()
    write(workspace, {"entry": "replacement", "big/blob": "x" * 101})
    line = caches.settle(workspace, adopt=True)
    assert line.startswith("compile cache not adopted: over ")
    assert tree(caches.adopted) == {"entry": "previous"}
    assert os.listdir(caches.root) == ["train"]  # no partial staging copy left behind
    assert not os.path.exists(workspace)


def test_a_workspace_of_exactly_the_byte_cap_is_adopted(caches, monkeypatch):
    monkeypatch.setattr(compilecache, "MAX_BYTES", 100)
    workspace = caches.workspace()
    write(workspace, {"a": "x" * 60, "b/c": "y" * 40})
    assert caches.settle(workspace, adopt=True).startswith("compile cache adopted: ")
    assert tree(caches.adopted) == {"a": "x" * 60, "b": "<dir>", "b/c": "y" * 40}


def test_the_byte_cap_counts_files_across_folders(caches, monkeypatch):
    monkeypatch.setattr(compilecache, "MAX_BYTES", 100)
    workspace = caches.workspace()
    write(workspace, {f"d{i}/part": "x" * 30 for i in range(4)})  # 120 bytes, no file over the cap
    assert caches.settle(workspace, adopt=True).startswith("compile cache not adopted")
    assert not os.path.exists(caches.adopted)


# -- the evaluator's own cache ---------------------------------------------------------------------
def test_the_evaluator_has_a_cache_of_its_own_apart_from_the_adopted_one(caches):
    path = caches.evaluator_cache()
    assert os.path.isdir(path) and path != caches.adopted
    workspace = caches.workspace()
    write(workspace, {"entry": "from train.py"})
    caches.settle(workspace, adopt=True)
    assert os.listdir(path) == []


def stashed(folder, tmp_path, text):
    """A program file holding `text`, stashed in the evaluator cache `folder` as the executor does."""
    (tmp_path / "model.pt2").write_text(text)
    return compilecache.stash_program(folder, str(tmp_path / "model.pt2"))


def test_a_kept_runs_program_replaces_the_one_before_whole(caches, tmp_path):
    folder = caches.evaluator_cache()
    for text in ("first program", "second program"):
        compilecache.settle_program(stashed(folder, tmp_path, text), kept=True)
    assert tree(folder) == {compilecache.PROGRAM: "second program"}
    assert compilecache.remembered_program(folder) == os.path.join(folder, compilecache.PROGRAM)


def test_a_program_of_a_run_not_kept_goes_and_the_kept_one_stays(caches, tmp_path):
    folder = caches.evaluator_cache()
    compilecache.settle_program(stashed(folder, tmp_path, "kept"), kept=True)
    compilecache.settle_program(stashed(folder, tmp_path, "discarded"), kept=False)
    assert tree(folder) == {compilecache.PROGRAM: "kept"}


def test_a_program_that_cannot_be_stashed_leaves_nothing_behind(caches, tmp_path):
    folder = caches.evaluator_cache()
    assert compilecache.stash_program(folder, str(tmp_path / "gone.pt2")) is None
    assert tree(folder) == {}


def test_a_program_over_a_quarter_of_the_cache_is_not_stashed(caches, tmp_path, monkeypatch):
    """Kept in the evaluator's cache, it would have the next trim throw the compiled code away."""
    monkeypatch.setattr(compilecache, "MAX_BYTES", 40)
    assert stashed(caches.evaluator_cache(), tmp_path, "x" * 11) is None
    assert tree(caches.evaluator_cache()) == {} and (tmp_path / "model.pt2").exists()


def test_programs_stashed_by_runs_that_never_settled_go_with_the_next_trim(caches, tmp_path):
    folder = caches.evaluator_cache()
    compilecache.settle_program(stashed(folder, tmp_path, "kept"), kept=True)
    stashed(folder, tmp_path, "its run crashed before it was judged")
    caches.trim_evaluator_cache()
    assert tree(folder) == {compilecache.PROGRAM: "kept"}


def test_a_link_in_place_of_the_program_is_no_program(caches, secret):
    os.symlink(secret, os.path.join(caches.evaluator_cache(), compilecache.PROGRAM))
    assert compilecache.remembered_program(caches.evaluator_cache()) is None


def test_the_evaluator_is_given_the_kept_program_to_compile_ahead(caches, tmp_path, smoke_cache):
    from autoresearch import evaluator
    folder = caches.evaluator_cache()
    compilecache.settle_program(stashed(folder, tmp_path, "a program"), kept=True)
    private = tmp_path / "private"
    private.mkdir()
    trusted = evaluator.Evaluator(str(ROOT), str(private), "smoke", smoke_cache, sandboxed=False, compile_cache=folder)
    try:
        argv = trusted.proc.args
    finally:
        trusted.close()
    assert argv[argv.index("--ahead") + 1] == os.path.join(folder, compilecache.PROGRAM)


def unigram_train(bias, table="torch.zeros(V)"):
    """A train.py that hands over a unigram model: logits = its parameter, set to `bias`, plus a constant
    `table` (Python code; V the vocabulary size); after the budget's time on the clock."""
    return textwrap.dedent(f"""\
        import time
        import numpy as np
        import torch
        import prepare
        V = prepare.Tokenizer.from_directory().get_vocab_size()

        class Unigram(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.bias = torch.nn.Parameter({bias})
                self.table = {table}  # a plain tensor: a constant of the program

            def forward(self, idx):
                return torch.nn.functional.one_hot(idx, V).float() * 0.0 + self.bias + self.table

        next(prepare.make_dataloader(prepare.Tokenizer.from_directory(), 4, prepare.MAX_SEQ_LEN, "train"))
        time.sleep(prepare.TIME_BUDGET)
        val_bpb = prepare.evaluate_bpb(Unigram(), None, 4)
        print("---")
        print(f"val_bpb:          {{val_bpb:.6f}}")
        print(f"training_seconds: {{prepare.TIME_BUDGET:.1f}}")
        """)


UNIGRAM_COUNTS = ("(torch.from_numpy(np.bincount(prepare._train_arrays()[0].astype(np.int64), minlength=V)).float()"
                  " + 1).log()")


@pytest.fixture
def ahead_repo(tmp_path, smoke_cache, temp, monkeypatch):
    """A campaign judged by the real executor and evaluator, on branch autoresearch/ahead."""
    monkeypatch.setenv("AUTORESEARCH_TIME_BUDGET", str(BUDGET))
    monkeypatch.delenv("AUTORESEARCH_EXECUTOR", raising=False)
    repo = make_repo(tmp_path / "repo")
    git(repo, "checkout", "-qb", "autoresearch/ahead")
    return repo


def uniform_bpb():
    import prepare
    from test_metric import expected_uniform_bpb
    return expected_uniform_bpb(prepare.Tokenizer.from_directory())


def test_a_model_with_the_graphs_of_the_last_kept_run_runs_on_its_program_compiled_ahead(ahead_repo):
    """The kept baseline's program is compiled while later runs train; a discarded run with other graphs
    does not displace it; a model with its graphs (other parameters) runs on it, with its own parameters."""
    baseline = run_baseline(ahead_repo, unigram_train("torch.zeros(V)"))
    other = run_standin(ahead_repo, "other graphs", unigram_train("torch.zeros(V)", table="torch.zeros(1, V)"),
                        threshold=NEVER_KEEP)
    same = run_standin(ahead_repo, "unigram counts", unigram_train(UNIGRAM_COUNTS), threshold=NEVER_KEEP)
    assert [r["status"] for r in (baseline, other, same)] == ["keep", "discard", "discard"], same["cause"]
    assert [r["eval_ahead"] for r in (baseline, other, same)] == [0, 0, 1]
    assert baseline["val_bpb"] == pytest.approx(uniform_bpb(), rel=1e-6)
    assert same["val_bpb"] < uniform_bpb() - 0.2


def test_a_constant_of_the_program_compiled_ahead_never_scores_the_next_model(ahead_repo):
    """A model with the same graphs runs on the kept run's program with only its parameters copied in.
    The kept run hands over a good constant table (log unigram counts of the training tokens), the next
    one the same graphs with a table of zeros: were the kept one's constant used, the next would score
    as well. It scores as uniform logits do, compiled anew."""
    good = run_baseline(ahead_repo, unigram_train("torch.zeros(V)", table=UNIGRAM_COUNTS))
    zeros = run_standin(ahead_repo, "zeros as the same constant", unigram_train("torch.zeros(V)"), threshold=NEVER_KEEP)
    assert (good["status"], zeros["status"]) == ("keep", "discard"), zeros["cause"]
    assert good["val_bpb"] < uniform_bpb() - 0.2
    assert zeros["val_bpb"] == pytest.approx(uniform_bpb(), rel=1e-6) and zeros["eval_ahead"] == 0


# -- what the sandbox makes of it ------------------------------------------------------------------
SPEC = sandbox.Spec(train_py="", base_commit="x", profile="smoke")


def setenvs(argv):
    """The --setenv pairs of a bubblewrap command line."""
    return {argv[i + 1]: argv[i + 2] for i, arg in enumerate(argv) if arg == "--setenv"}


def binds(argv):
    """(option, outside, inside) of every bind of a bubblewrap command line."""
    return [(arg, argv[i + 1], argv[i + 2]) for i, arg in enumerate(argv)
            if arg in ("--bind", "--ro-bind", "--bind-try", "--ro-bind-try", "--dev-bind")]


def test_environment_points_inductor_and_triton_into_the_cache():
    assert compilecache.environment("/c") == {"TORCHINDUCTOR_CACHE_DIR": "/c", "TRITON_CACHE_DIR": "/c/triton"}


def test_the_sandboxed_command_binds_the_workspace_writable_at_inside(tmp_path):
    workspace = str(tmp_path / "ws")
    argv, env = sandbox.command(SPEC, str(tmp_path / "exp"), str(tmp_path / "cache" / "smoke"),
                                str(tmp_path / "handoff"), 5, sandboxed=True, compile_cache=workspace)
    assert env is None
    assert [b for b in binds(argv) if b[1] == workspace] == [("--bind", workspace, compilecache.INSIDE)]
    assert argv.index("--bind", argv.index(workspace) - 1) < argv.index("--")


def test_the_sandboxed_command_names_the_cache_inside_in_the_environment(tmp_path):
    argv, _ = sandbox.command(SPEC, str(tmp_path / "exp"), str(tmp_path / "cache" / "smoke"),
                              str(tmp_path / "handoff"), 5, sandboxed=True, compile_cache=str(tmp_path / "ws"))
    env = setenvs(argv)
    assert env["TORCHINDUCTOR_CACHE_DIR"] == compilecache.INSIDE
    assert env["TRITON_CACHE_DIR"] == f"{compilecache.INSIDE}/triton"
    assert str(tmp_path / "ws") not in env.values()  # the path outside is not told


def test_without_a_compile_cache_the_sandboxed_command_binds_and_sets_no_cache(tmp_path):
    argv, _ = sandbox.command(SPEC, str(tmp_path / "exp"), str(tmp_path / "cache" / "smoke"),
                              str(tmp_path / "handoff"), 5, sandboxed=True)
    assert compilecache.INSIDE not in argv
    assert "TORCHINDUCTOR_CACHE_DIR" not in setenvs(argv) and "TRITON_CACHE_DIR" not in setenvs(argv)


def test_the_unsandboxed_command_names_the_workspace_itself(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", "/host/cache")  # not passed on: the environment is built
    _, env = sandbox.command(SPEC, str(tmp_path / "exp"), str(tmp_path / "cache" / "smoke"),
                             str(tmp_path / "handoff"), 5, sandboxed=False, compile_cache=str(tmp_path / "ws"))
    assert env["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "ws")
    assert env["TRITON_CACHE_DIR"] == str(tmp_path / "ws" / "triton")
    _, env = sandbox.command(SPEC, str(tmp_path / "exp"), str(tmp_path / "cache" / "smoke"),
                             str(tmp_path / "handoff"), 5, sandboxed=False)
    assert "TORCHINDUCTOR_CACHE_DIR" not in env and "TRITON_CACHE_DIR" not in env


@needs_bwrap
def test_inside_the_sandbox_train_py_writes_its_cache_into_the_workspace(tmp_path, smoke_cache, caches):
    write(caches.adopted, {"fxgraph/entry": "adopted"})
    workspace = caches.workspace()
    folder, handoff = tmp_path / "exp", tmp_path / "handoff"
    handoff.mkdir()
    write(folder, {"train.py": textwrap.dedent("""\
        import json, os
        cache = os.environ["TORCHINDUCTOR_CACHE_DIR"]
        with open(os.path.join(cache, "fxgraph", "entry")) as f:
            seen = f.read()
        os.makedirs(os.environ["TRITON_CACHE_DIR"])
        with open(os.path.join(os.environ["TRITON_CACHE_DIR"], "kernel"), "w") as f:
            f.write("compiled inside")
        print(json.dumps({"cache": cache, "triton": os.environ["TRITON_CACHE_DIR"], "seen": seen}))
        """)})
    argv, _ = sandbox.command(SPEC, str(folder), os.path.join(smoke_cache, "smoke"), str(handoff), 5,
                              sandboxed=True, compile_cache=workspace)
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {"cache": compilecache.INSIDE, "triton": f"{compilecache.INSIDE}/triton",
                                       "seen": "adopted"}
    assert tree(workspace)["triton/kernel"] == "compiled inside"
    assert tree(caches.adopted) == {"fxgraph": "<dir>", "fxgraph/entry": "adopted"}  # until adopted


# -- the runner's decision, with the printed-metric stand-in (no training) --------------------------
def cache_writing_train(val_bpb, name):
    """A stand-in train.py that prints what its compile cache holds at start, writes `name` into
    its `marker`, then prints val_bpb as its summary."""
    return fake_train(val_bpb, body=f"""
        cache = os.environ["TORCHINDUCTOR_CACHE_DIR"]
        path = os.path.join(cache, "marker")
        print("COMPILE CACHE AT START " + (open(path).read() if os.path.exists(path) else "nothing"))
        with open(path, "w") as f:
            f.write({name!r})
        """)


def seen_at_start(row):
    return Path(row["log_path"]).read_text().split("COMPILE CACHE AT START ", 1)[1].split("\n", 1)[0]


@pytest.fixture
def standin_repo(campaign_repo, printed_metric, temp):
    """The campaign repo on branch autoresearch/t, judged on the val_bpb its stand-in prints."""
    git(campaign_repo, "checkout", "-qb", "autoresearch/t")
    return campaign_repo


def run_standin(repo, description, train_py, **kw):
    (repo / "train.py").write_text(train_py)
    return runner.run_experiment(repo, description, **kw)


def run_baseline(repo, train_py, **kw):
    """The campaign's first run on its own train.py: committed first, so the base commit holds it."""
    (repo / "train.py").write_text(train_py)
    git(repo, "commit", "-qam", "the campaign's train.py")
    return runner.run_experiment(repo, "baseline", **kw)


def test_only_the_campaigns_own_train_py_leaves_the_cache_later_runs_start_from(standin_repo, temp):
    """A kept change an agent wrote adopts nothing either: its train.py could leave its weights there."""
    repo = standin_repo
    baseline = run_baseline(repo, cache_writing_train(1.0, "from-baseline"))
    worse = run_standin(repo, "worse", cache_writing_train(1.1, "from-discarded"))
    crashed = run_standin(repo, "crash", cache_writing_train(0.5, "from-crash") + "sys.exit(1)\n")
    better = run_standin(repo, "better", cache_writing_train(0.9, "from-better"))
    after = run_standin(repo, "after", cache_writing_train(1.2, "from-after"))
    assert [r["status"] for r in (baseline, worse, crashed, better, after)] == \
        ["keep", "discard", "crash", "keep", "discard"]
    assert [seen_at_start(r) for r in (baseline, worse, crashed, better, after)] == \
        ["nothing", "from-baseline", "from-baseline", "from-baseline", "from-baseline"]
    ledger = Ledger(repo=repo)
    events = [e["message"] for e in ledger.events(tag="t") if e["kind"] == "compile-cache"]
    assert [m.split(":", 1)[0] for m in events] == [f"#{baseline['id']}"]
    assert Path(runner.compile_caches(ledger, "t").adopted, "marker").read_text() == "from-baseline"
    assert not list(temp.glob("autoresearch-compile-*"))


def test_a_kept_run_of_an_edited_train_py_adopts_no_cache(standin_repo):
    row = run_standin(standin_repo, "edited, then kept", cache_writing_train(1.0, "from-an-edit"))
    assert row["status"] == "keep"
    assert not os.path.exists(runner.compile_caches(Ledger(repo=standin_repo), "t").adopted)


def test_a_kept_run_whose_cache_is_over_the_cap_is_kept_and_the_refusal_is_an_event(standin_repo, monkeypatch):
    monkeypatch.setattr(compilecache, "MAX_BYTES", 4)
    row = run_baseline(standin_repo, cache_writing_train(1.0, "too big for the cap"))
    assert row["status"] == "keep"
    events = [e["message"] for e in Ledger(repo=standin_repo).events(tag="t") if e["kind"] == "compile-cache"]
    assert events == [f"#{row['id']}: compile cache not adopted: over 4 bytes"]
    assert not os.path.exists(runner.compile_caches(Ledger(repo=standin_repo), "t").adopted)


def test_a_kept_run_whose_cache_cannot_be_copied_is_still_returned_as_kept(standin_repo, monkeypatch):
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(hostfiles, "copy_tree", full)
    row = run_baseline(standin_repo, cache_writing_train(1.0, "from-baseline"))
    assert row["status"] == "keep"


# -- through the harness: only a kept run's cache reaches later runs -------------------------------
BUDGET = 3
NEVER_KEEP = 1000.0  # a judged run is discarded (as in test_hostile.py)


def cache_probe(name, then=""):
    """train.py's first lines: log what the compile cache holds at start (its top-level marker files),
    then write `marker` and `<name>.txt`, both holding name; then `then`."""
    return textwrap.dedent(f"""\
        import json as _json, os as _os
        _cache = _os.environ["TORCHINDUCTOR_CACHE_DIR"]
        _found = {{}}
        for _name in sorted(_os.listdir(_cache)):
            if _name == "marker" or _name.endswith(".txt"):
                with open(_os.path.join(_cache, _name)) as _f:
                    _found[_name] = _f.read()
        print("COMPILE CACHE AT START " + _json.dumps(_found, sort_keys=True), flush=True)
        for _name in ("marker", {name!r} + ".txt"):
            with open(_os.path.join(_cache, _name), "w") as _f:
                _f.write({name!r})
        {then}
        """)


def training(name):
    """The real train.py, which first probes and writes its compile cache."""
    return REAL_TRAIN.replace("import gc\n", cache_probe(name) + "import gc\n", 1)


def crashing(name):
    """A train.py that probes and writes its compile cache, then exits 1 without training."""
    return cache_probe(name, then="raise SystemExit(1)")


def found_at_start(row):
    log = Path(row["log_path"]).read_text()
    lines = [line for line in log.splitlines() if line.startswith("COMPILE CACHE AT START ")]
    assert len(lines) == 1, log[-3000:]
    return json.loads(lines[0].split("COMPILE CACHE AT START ", 1)[1])


@needs_bwrap
def test_only_the_baselines_compile_cache_reaches_later_experiments(tmp_path, smoke_cache, temp, monkeypatch):
    """baseline (kept) writes from-baseline; a crash writes poison; a discard (the real training) must
    find the baseline's file and writes from-discarded; a last run must still find only the baseline's."""
    monkeypatch.setenv("AUTORESEARCH_TIME_BUDGET", str(BUDGET))
    monkeypatch.delenv("AUTORESEARCH_EXECUTOR", raising=False)  # the real, sandboxed executor
    repo = make_repo(tmp_path / "repo")
    git(repo, "checkout", "-qb", "autoresearch/cc")

    def run(description, train_py, **kw):
        (repo / "train.py").write_text(train_py)
        return runner.run_experiment(repo, description, **kw)

    baseline = run_baseline(repo, training("from-baseline"))
    assert (baseline["status"], baseline["sandbox"]) == ("keep", "bwrap"), baseline["log_tail"][-2000:]
    assert found_at_start(baseline) == {}

    poison = run("poison, then crash", crashing("poison"))
    assert poison["status"] == "crash", poison["log_tail"][-2000:]
    assert found_at_start(poison) == {"marker": "from-baseline", "from-baseline.txt": "from-baseline"}

    discarded = run("discarded", training("from-discarded"), threshold=NEVER_KEEP)
    assert discarded["status"] == "discard", discarded["cause"]
    assert found_at_start(discarded) == {"marker": "from-baseline", "from-baseline.txt": "from-baseline"}

    last = run("probe", crashing("probe"))
    assert found_at_start(last) == {"marker": "from-baseline", "from-baseline.txt": "from-baseline"}

    ledger = Ledger(repo=repo)
    adopted = runner.compile_caches(ledger, "cc").adopted
    assert {name: Path(adopted, name).read_text() for name in os.listdir(adopted)
            if name == "marker" or name.endswith(".txt")} == {"marker": "from-baseline",
                                                              "from-baseline.txt": "from-baseline"}
    events = [e["message"] for e in ledger.events(tag="cc") if e["kind"] == "compile-cache"]
    assert len(events) == 1 and events[0].startswith(f"#{baseline['id']}: compile cache adopted: "), events
    assert not list(temp.glob("autoresearch-compile-*"))  # every workspace was thrown away


def test_an_evaluator_cache_over_the_byte_cap_starts_again_empty(caches, monkeypatch):
    write(caches.evaluator_cache(), {"old/graph": "x" * 64})
    monkeypatch.setattr(compilecache, "MAX_BYTES", 16)
    caches.trim_evaluator_cache()
    assert os.listdir(caches.evaluator_cache()) == []
