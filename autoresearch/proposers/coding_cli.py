"""
The `claude` and `codex` proposers: a coding CLI in its non-interactive mode, run with a timeout and
allowed to edit files only (`claude -p` with Read/Edit/Write tools and acceptEdits; `codex exec` in
the workspace-write sandbox), in a scratch folder holding a copy of train.py and, to read, program.md
and the fixed files: never in the checkout, so it cannot touch git, the ledger or the fixed files.
The harness then checks that only train.py changed (anything else makes the proposal invalid), reads
the new train.py, and takes the description from a `DESCRIPTION:` line of the CLI's final message
(else its last line). The harness, not the CLI, runs the experiment.
"""

import ast
import json
import os
import shutil
import signal
import subprocess
import tempfile

from autoresearch.proposers import Proposal, ProposalError, Proposer, ProposerConfigError
from autoresearch.proposers.llm import Pricing, build_prompt, description_of


CONTEXT_FILES = ("train.py", "program.md", "prepare.py", "constants.py")  # what the CLI may read


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


class CodingCLIProposer(Proposer):
    executable = None

    def __init__(self, repo=".", model=None, cli_timeout=1800, price_input=None, price_output=None, **_ignored):
        if shutil.which(self.executable) is None:
            raise ProposerConfigError(f"the {self.name} proposer runs `{self.executable}`, which is not on PATH: "
                                      f"install it (and log in), or choose another --proposer")
        self.repo = str(repo)
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
        self._process = subprocess.Popen(self.command(prompt), cwd=cwd, stdin=subprocess.DEVNULL,
                                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                         start_new_session=True)  # its own group: killed as a whole
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
            (line.strip()[:200] for line in reversed(text.splitlines()) if line.strip()), None)
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
