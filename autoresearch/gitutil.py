"""Small git helpers: each one runs one git command in a checkout and returns its text."""

import fcntl
import os
import subprocess
import tempfile

# files the harness itself writes into a checkout: never part of an experiment
HARNESS_OUTPUTS = ["run.log", "results.tsv", ".autoresearch"]
# pathspecs that leave those (and Python's byte-code caches) out of `git add`, `git status`, `git diff`.
# Written as globs on purpose: `git add` fails on a literal pathspec naming an ignored file, even an
# excluding one ("The following paths are ignored..."), but not on a wildcard one.
EXCLUDES = [":(exclude,glob)**/run.log", ":(exclude,glob)**/results.tsv", ":(exclude,glob)**/.autoresearch/**",
            ":(exclude,glob)**/__pycache__/**", ":(exclude,glob)**/*.pyc"]


class GitError(RuntimeError):
    """A git command failed; the message is git's own last line."""


# every git command of the harness runs with hooks off: an experiment or a proposer that installs a
# hook (or points core.hooksPath somewhere) must not get code run inside the harness's commit/reset
NO_HOOKS = ["-c", "core.hooksPath=/dev/null", "-c", "core.fsmonitor=false"]


def git(repo, *args, check=True, env=None, input=None):
    """Run `git <args>` in repo and return its stdout without the trailing newline."""
    proc = subprocess.run(["git", *NO_HOOKS, *args], cwd=repo, capture_output=True, text=True, input=input,
                          env={**os.environ, **env} if env else None)
    if check and proc.returncode != 0:
        lines = (proc.stderr or proc.stdout).strip().splitlines()
        raise GitError(f"git {' '.join(args)}: {lines[-1] if lines else f'exit code {proc.returncode}'}")
    return proc.stdout.rstrip("\n")


def show_bytes(repo, obj):
    """The raw bytes of a git object (e.g. a blob id or `commit:path`)."""
    proc = subprocess.run(["git", "cat-file", "blob", obj], cwd=repo, capture_output=True)
    if proc.returncode != 0:
        raise GitError(f"git cat-file blob {obj}: {proc.stderr.decode(errors='replace').strip() or proc.returncode}")
    return proc.stdout


def is_repo(path):
    proc = subprocess.run(["git", "rev-parse", "--git-dir"], cwd=path, capture_output=True, text=True)
    return proc.returncode == 0


def toplevel(repo):
    """The root folder of the checkout (worktree) that holds repo."""
    return git(repo, "rev-parse", "--show-toplevel")


def main_root(repo):
    """The root of the main worktree, shared by every worktree of the repository."""
    common = git(repo, "rev-parse", "--path-format=absolute", "--git-common-dir")
    return os.path.dirname(common)


def git_dir(repo):
    """This worktree's own git folder (.git, or .git/worktrees/<name> in a linked worktree)."""
    return git(repo, "rev-parse", "--absolute-git-dir")


def current_branch(repo):
    """The checked-out branch's short name, or None on a detached HEAD."""
    name = git(repo, "symbolic-ref", "--quiet", "--short", "HEAD", check=False)
    return name or None


def head(repo):
    return git(repo, "rev-parse", "HEAD")


def short(sha):
    return sha[:7] if sha else ""


def first_parent_history(repo, rev="HEAD", limit=10000):
    """Commits from rev back along first parents, newest first."""
    return git(repo, "rev-list", "--first-parent", f"--max-count={limit}", rev).split()


def stage_all(repo, env=None):
    """Stage every change of the checkout (new, modified, deleted files) except the harness's outputs
    (env: e.g. {"GIT_INDEX_FILE": path} to stage into another index)."""
    git(repo, "add", "--all", "--", ".", *EXCLUDES, env=env)


def staged_paths(repo, base):
    """Paths whose staged content differs from commit base (added, modified, deleted; renames as two)."""
    out = git(repo, "diff", "--cached", "--name-only", "--no-renames", base, "--", ".", *EXCLUDES)
    return out.splitlines()


def has_staged_changes(repo):
    """Whether the index differs from HEAD."""
    return subprocess.run(["git", *NO_HOOKS, "diff", "--cached", "--quiet", "HEAD"], cwd=repo).returncode != 0


def dirty_paths(repo):
    """Tracked files changed in the working tree and untracked files git does not ignore."""
    out = git(repo, "status", "--porcelain=v1", "-z", "--untracked-files=all", "--no-renames",
              "--", ".", *EXCLUDES)
    return [entry[3:] for entry in out.split("\0") if entry]


def untracked_paths(repo):
    out = git(repo, "ls-files", "--others", "--exclude-standard", "-z", "--", ".", *EXCLUDES)
    return [p for p in out.split("\0") if p]


def _identity(repo):
    """A fallback author for commits in a repository without user.name/user.email configured."""
    if git(repo, "config", "user.email", check=False) and git(repo, "config", "user.name", check=False):
        return []
    return ["-c", "user.name=autoresearch", "-c", "user.email=autoresearch@localhost"]


def commit(repo, message):
    """Commit what is staged (hooks and signing off: the harness's commits must be predictable)."""
    git(repo, *_identity(repo), "-c", "commit.gpgsign=false", "commit", "--quiet", "--no-verify",
        "--allow-empty-message", "-m", message)
    return head(repo)


def commit_file(repo, parent, path, text, message):
    """A commit on top of parent whose tree is parent's with `path` holding text, made without
    touching the working tree or the index (a swarm's driver commits many experiments at once)."""
    blob = git(repo, "hash-object", "-w", "--stdin", input=text)
    with tempfile.TemporaryDirectory() as tmp:
        env = {"GIT_INDEX_FILE": os.path.join(tmp, "index")}
        git(repo, "read-tree", parent, env=env)
        git(repo, "update-index", "--add", "--cacheinfo", f"100644,{blob},{path}", env=env)
        tree = git(repo, "write-tree", env=env)
    return git(repo, *_identity(repo), "-c", "commit.gpgsign=false", "commit-tree", tree, "-p", parent,
               "-m", message or "(no description)")


def commit_worktree(repo, parent, message):
    """A commit on top of parent of the working tree as it is (changed, new and deleted files; not the
    harness's outputs), made without touching the index."""
    with tempfile.TemporaryDirectory() as tmp:
        env = {"GIT_INDEX_FILE": os.path.join(tmp, "index")}
        git(repo, "read-tree", parent, env=env)
        git(repo, "add", "--all", "--", ".", *EXCLUDES, env=env)
        tree = git(repo, "write-tree", env=env)
    return git(repo, *_identity(repo), "-c", "commit.gpgsign=false", "commit-tree", tree, "-p", parent, "-m", message)


def merge_text(base, ours, theirs):
    """Three-way merge of one file's texts (git merge-file): the merged text, or None on a conflict."""
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for name, text in (("ours", ours), ("base", base), ("theirs", theirs)):
            paths.append(os.path.join(tmp, name))
            with open(paths[-1], "w", encoding="utf-8") as f:
                f.write(text)
        proc = subprocess.run(["git", "merge-file", "-p", *paths], capture_output=True, text=True)
    return proc.stdout if proc.returncode == 0 else None


def diff(repo, old, new, limit=1_000_000):
    """`git diff old new` as text, cut at limit characters."""
    text = git(repo, "diff", "--no-color", "--no-ext-diff", old, new)
    return text if len(text) <= limit else text[:limit] + f"\n... diff cut at {limit} characters\n"


def reset_hard(repo, rev):
    git(repo, "reset", "--quiet", "--hard", rev)


def update_ref(repo, ref, sha):
    git(repo, "update-ref", ref, sha)


def refs(repo, prefix):
    """{ref name: sha} of the refs under prefix (e.g. refs/autoresearch/<tag>/)."""
    out = git(repo, "for-each-ref", "--format=%(refname) %(objectname)", prefix)
    return dict(line.split(" ", 1) for line in out.splitlines() if line)


def flagged_paths(repo):
    """Tracked paths git is told not to look at (skip-worktree or assume-unchanged): edits to them
    would not show in `git status` or `git diff`."""
    out = git(repo, "ls-files", "-v", "-z")
    return sorted(entry[2:] for entry in out.split("\0") if entry and (entry[0] == "S" or entry[0].islower()))


def clear_flags(repo, paths):
    if paths:  # one flag per call: update-index applies only the last of these options given
        git(repo, "update-index", "--no-skip-worktree", "--", *paths)
        git(repo, "update-index", "--no-assume-unchanged", "--", *paths)


def remove_untracked(repo, paths):
    """Delete the given untracked files (the checkout's other untracked files stay)."""
    if paths:
        git(repo, "clean", "--force", "--quiet", "--", *paths)


class CheckoutLock:
    """One holder at a time per checkout: a locked file in the worktree's own git folder, holding the
    holder's pid. `busy(pid)` makes the exception raised when someone else holds it."""

    def __init__(self, checkout, name, busy):
        self.path = os.path.join(git_dir(checkout), name)
        self.busy = busy

    def __enter__(self):
        self.file = open(self.path, "a+")
        try:
            fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.file.seek(0)
            pid = self.file.read().strip() or "?"
            self.file.close()
            raise self.busy(pid) from None
        self.file.seek(0)
        self.file.truncate()
        self.file.write(str(os.getpid()))
        self.file.flush()
        return self

    def __exit__(self, *exc):
        fcntl.flock(self.file, fcntl.LOCK_UN)
        self.file.close()
