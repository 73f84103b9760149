"""
The `claude` and `codex` proposers: a coding CLI in its non-interactive mode, run with a timeout and
allowed to edit files only (`claude -p` with Read/Edit/Write tools and acceptEdits; `codex exec` in
the workspace-write sandbox), in a scratch folder holding a copy of train.py and, to read, program.md
and the fixed files: never in the checkout, so it cannot touch git, the ledger or the fixed files.
The harness then checks that only train.py changed (anything else makes the proposal invalid; it
looks at what else is there without reading it, and reads a train.py of at most MAX_TRAIN_PY bytes),
and takes the description from a `DESCRIPTION:` line of the CLI's final message (else its last line).
The harness, not the CLI, runs the experiment.

The CLI runs in bubblewrap, with a network namespace whose one way out is a proxy to its API, its
settings as a copy and the validation data hidden (or, with AUTORESEARCH_SANDBOX=off, on the host, with
a warning): cli_sandbox.py, whose CLISandbox each proposer builds from its CLI's facts (api_hosts,
base_url_variables, inside_environment, config), says what it shows and hides, and why.
"""
import ast
import collections
import json
import os
import shutil
import signal
import stat
import subprocess
import threading

from autoresearch import hostfiles
from autoresearch.ledger import one_line
from autoresearch.proposers import Proposal, ProposalError, Proposer, ProposerConfigError
from autoresearch.proposers.cli_sandbox import PROXY_ALLOW_ENV, CLISandbox, Config
from autoresearch.proposers.llm import Pricing, build_prompt, description_of


CONTEXT_FILES = ("train.py", "program.md", "prepare.py", "constants.py")  # what the CLI may read
MAX_TRAIN_PY = 1 << 20          # bytes of a proposed train.py the harness reads
MAX_SCRATCH_ENTRIES = 10_000    # files and folders the harness looks at in the scratch folder
OUTPUT_LIMIT = 16 << 20         # bytes of the CLI's stdout the harness keeps (the last ones); of stderr, 1/16


# -- the scratch folder --------------------------------------------------------------------------
def _scratch(repo, train_py):
    """(a throwaway folder with the proposal's context, {name: bytes} of what was written there): the
    train.py to edit and, to read, the checkout's program.md and the fixed files. The CLI never works
    in the checkout itself."""
    folder = hostfiles.private_folder("autoresearch-propose-")
    written = {}
    for name in CONTEXT_FILES[1:]:
        path = os.path.join(repo, name)
        if os.path.isfile(path):
            with open(path, "rb") as f:
                written[name] = f.read()
    written["train.py"] = train_py.encode("utf-8")
    for name, data in written.items():
        with open(os.path.join(folder, name), "wb") as f:
            f.write(data)
    return folder, written


def _listing(folder, limit=MAX_SCRATCH_ENTRIES):
    """{relative path: lstat result, or None for a folder it cannot list} of everything under folder
    that is not a folder, links not followed; None past limit entries (folders counted). Nothing is
    read: what a CLI leaves behind (a huge sparse file, a FIFO) must not cost the harness memory or time."""
    found, count, pending = {}, 0, [folder]
    while pending:
        current = pending.pop()
        try:
            with os.scandir(current) as entries:
                for entry in entries:
                    count += 1
                    if count > limit:
                        return None
                    info = entry.stat(follow_symlinks=False)
                    if stat.S_ISDIR(info.st_mode):
                        pending.append(entry.path)
                    else:
                        found[os.path.relpath(entry.path, folder)] = info
        except OSError:
            found[os.path.relpath(current, folder)] = None
    return found


def _changes(folder, written, after):
    """The relative paths that differ from what the harness wrote: new, removed or changed (a file
    the harness wrote is read back up to its own size, no further)."""
    changed = {path for path in after if path not in written}
    for path, data in written.items():
        if path not in after or hostfiles.read_small(os.path.join(folder, path), len(data)) != data:
            changed.add(path)
    return sorted(changed)


def _new_train_py(folder, after):
    """(the new train.py's text, None), or (None, why it cannot be a proposal)."""
    info = after.get("train.py")
    if info is None:
        return None, "the CLI removed train.py"
    if not stat.S_ISREG(info.st_mode):
        return None, "the CLI left train.py as something other than a regular file"
    if info.st_size > MAX_TRAIN_PY:
        return None, (f"the new train.py is {info.st_size} bytes, more than the {MAX_TRAIN_PY >> 20} MiB a "
                      f"proposal may have")
    data = hostfiles.read_small(os.path.join(folder, "train.py"), MAX_TRAIN_PY)
    if data is None:
        return None, "the new train.py could not be read"
    return data.decode("utf-8", "replace"), None


class _Tail(threading.Thread):
    """Reads a stream to its end, keeping its last `limit` bytes: a CLI that prints without end costs
    the harness no more memory than that (its final message and usage come last)."""

    def __init__(self, stream, limit):
        super().__init__(daemon=True)
        self.stream, self.limit, self.chunks, self.size = stream, limit, collections.deque(), 0
        self.lock = threading.Lock()
        self.start()

    def run(self):
        with self.stream:
            while chunk := self.stream.read1(1 << 16):
                with self.lock:
                    self.chunks.append(chunk)
                    self.size += len(chunk)
                    while self.size - len(self.chunks[0]) >= self.limit:
                        self.size -= len(self.chunks.popleft())

    def text(self):
        """What was kept, once the stream has ended (its writers are gone: the CLI was killed or exited)."""
        self.join(timeout=10)
        with self.lock:
            return b"".join(self.chunks)[-self.limit:].decode("utf-8", "replace")


class CodingCLIProposer(Proposer):
    executable = None
    api_hosts = ()            # the hosts (port 443) its proxy opens tunnels to
    base_url_variables = ()   # variables naming another endpoint, whose host is allowed too
    inside_environment = {}   # variables the CLI gets inside unless the user set them

    def __init__(self, repo=".", model=None, cli_timeout=1800, price_input=None, price_output=None, **_ignored):
        if shutil.which(self.executable) is None:
            raise ProposerConfigError(f"the {self.name} proposer runs `{self.executable}`, which is not on PATH: "
                                      f"install it (and log in), or choose another --proposer")
        self.repo = str(repo)
        self.sandbox = CLISandbox(self.name, self.executable, self.repo, self.api_hosts, self.base_url_variables,
                                  self.inside_environment, self.config)
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
        """The Config of the CLI's login and settings, for a user whose home is home."""
        raise NotImplementedError

    def close(self):
        process = self._process
        if process and process.poll() is None:
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            process.wait()

    def _run(self, prompt, cwd):
        """(returncode, stdout, stderr, what its sandbox's proxy refused); None for the return code when
        the CLI ran past the timeout."""
        with self.sandbox.launch(self.command(prompt), cwd) as launch:
            result = self._wait(launch.argv, cwd, launch.env, launch.fds)
        return result + (launch.refused,)

    def _wait(self, argv, cwd, env, fds):
        """(returncode, stdout, stderr) of argv; None for the return code past the timeout."""
        try:
            self._process = subprocess.Popen(argv, cwd=cwd, env=env, pass_fds=fds, stdin=subprocess.DEVNULL,
                                             stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                             start_new_session=True)  # its own group: killed as a whole
        finally:
            for fd in fds:  # bubblewrap has its own copies
                os.close(fd)
        out, err = _Tail(self._process.stdout, OUTPUT_LIMIT), _Tail(self._process.stderr, OUTPUT_LIMIT >> 4)
        try:
            returncode = self._process.wait(timeout=self.timeout)
        except subprocess.TimeoutExpired:
            returncode = None
        finally:
            self.close()  # also on Ctrl-C/SIGTERM: no CLI outlives the loop
            self._process = None
        return returncode, out.text(), err.text()

    def propose(self, train_py, program_md, history, last_failure):
        system, prompt = build_prompt(train_py, program_md, history, last_failure, cli=True)
        scratch, written = _scratch(self.repo, train_py)
        try:
            returncode, out, err, refused = self._run(system + "\n\n" + prompt, cwd=scratch)
            after = _listing(scratch)
            if after is not None:
                changed = _changes(scratch, written, after)
                new, unusable = _new_train_py(scratch, after)
        finally:
            hostfiles.remove_private(scratch)  # whatever the CLI made of it (too deep for rmtree, setuid)
        text, prompt_tokens, completion_tokens, cost = self.parse_output(out or "")
        if cost is None:
            cost = self.pricing.cost(prompt_tokens, completion_tokens) if self.pricing else 0.0
        used = dict(model=self.model, prompt_tokens=prompt_tokens, completion_tokens=completion_tokens, cost_usd=cost)
        description = description_of(text) or next(
            (line[:200] for line in map(one_line, reversed(text.splitlines())) if line), None)
        if after is None:
            raise ProposalError(f"the {self.executable} CLI left more than {MAX_SCRATCH_ENTRIES} files in its "
                                f"scratch folder; ignored", description=description, **used)
        others = [p for p in changed if p != "train.py"]
        if others:
            shown = ", ".join(others[:5]) + (f", and {len(others) - 5} more" if len(others) > 5 else "")
            raise ProposalError(f"the {self.executable} CLI changed files other than train.py "
                                f"({shown}); ignored", description=description, **used)
        if returncode is None:
            raise ProposalError(f"the {self.executable} CLI did not finish in {self.timeout:g} s",
                                description=description, **used)
        if returncode != 0:  # e.g. network or rate limit: the loop backs off and asks again
            tail = (err or out or "").strip().splitlines()[-3:]
            note = (f" (its sandbox's proxy refused {', '.join(refused)}; {PROXY_ALLOW_ENV}=host:port lets one "
                    f"through)") if refused else ""
            raise RuntimeError(f"{self.executable} exited with status {returncode}: {' | '.join(tail)}{note}")
        if unusable:
            raise ProposalError(unusable, description=description, **used)
        if new == train_py:
            raise ProposalError(f"the {self.executable} CLI left train.py unchanged", description=description, **used)
        try:
            ast.parse(new)
        except SyntaxError as e:
            raise ProposalError(f"the new train.py is not valid Python: {e.msg} at line {e.lineno}",
                                description=description, **used)
        return Proposal(description=description or f"(edit by {self.executable}, no description)", train_py=new, **used)


# how each CLI is told not to search or fetch the web (whatever the person's own settings say)
WEB_TOOLS = {"claude": "WebSearch,WebFetch", "codex": 'web_search="disabled"'}


class ClaudeProposer(CodingCLIProposer):
    """Claude Code: `claude -p PROMPT --output-format json`, file tools only, edits accepted."""
    name = executable = "claude"
    api_hosts = ("api.anthropic.com", "console.anthropic.com", "claude.ai")  # the API, its OAuth logins
    base_url_variables = ("ANTHROPIC_BASE_URL", "ANTHROPIC_BEDROCK_BASE_URL", "ANTHROPIC_VERTEX_BASE_URL")
    # no telemetry, error reports or auto-update: hosts the proxy refuses anyway
    inside_environment = {"CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1"}

    def command(self, prompt):
        # --allowedTools adds to what the person's settings allow; web search runs on the API's side, where
        # the sandbox's proxy cannot stop it, and could fetch the validation text (public speeches): denied
        cmd = ["claude", "-p", prompt, "--output-format", "json", "--allowedTools", "Read,Edit,Write",
               "--disallowedTools", WEB_TOOLS["claude"], "--permission-mode", "acceptEdits"]
        return cmd + (["--model", self.model] if self.model else [])

    def config(self, home):
        # with CLAUDE_CONFIG_DIR, .claude.json is in that folder too
        moved = bool(os.environ.get("CLAUDE_CONFIG_DIR"))
        source = os.path.abspath(os.path.expanduser(os.environ["CLAUDE_CONFIG_DIR"])) if moved \
            else os.path.join(home, ".claude")
        return Config("CLAUDE_CONFIG_DIR", source, os.path.join(home, ".claude"), ".credentials.json",
                      skip=("projects", "todos", "shell-snapshots", "statsig", "file-history", "debug", "logs",
                            "session-env", "history.jsonl"),
                      home_files=() if moved else (os.path.join(home, ".claude.json"),), moved=moved)

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
    api_hosts = ("api.openai.com", "chatgpt.com", "auth.openai.com")  # the API, ChatGPT logins and their refresh
    base_url_variables = ("OPENAI_BASE_URL",)

    def command(self, prompt):
        cmd = ["codex", "exec", "--json", "--sandbox", "workspace-write", "--skip-git-repo-check",
               "-c", WEB_TOOLS["codex"]]  # search runs on the API's side, past the proxy (see ClaudeProposer)
        return cmd + (["--model", self.model] if self.model else []) + [prompt]

    def config(self, home):
        moved = bool(os.environ.get("CODEX_HOME"))
        source = os.path.abspath(os.path.expanduser(os.environ["CODEX_HOME"])) if moved \
            else os.path.join(home, ".codex")
        return Config("CODEX_HOME", source, os.path.join(home, ".codex"), "auth.json",
                      skip=("sessions", "archived_sessions", "log", "history.jsonl"), moved=moved)

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