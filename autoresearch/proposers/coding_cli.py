"""
The `claude` and `codex` proposers: a coding CLI in its non-interactive mode, run in the checkout
with a timeout and allowed to edit files only (`claude -p` with Read/Edit/Write tools and
acceptEdits; `codex exec` in the workspace-write sandbox). The CLI edits train.py; the harness then
checks that only train.py changed (anything else is reverted and the proposal is invalid), reads the
new train.py, restores the checkout, and takes the description from a `DESCRIPTION:` line of the
CLI's final message (else its last line). The harness, not the CLI, runs the experiment.
"""

import ast
import json
import os
import shutil
import signal
import subprocess

from autoresearch.proposers import Proposal, ProposalError, Proposer, ProposerConfigError
from autoresearch.proposers.llm import Pricing, build_prompt, description_of


def _git(repo, *args, check=True):
    return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, check=check).stdout


def changed_paths(repo):
    """Paths that differ from HEAD in the index or the work tree, untracked files included."""
    out = _git(repo, "status", "--porcelain", "-z", "--untracked-files=all")
    entries, paths = out.split("\0"), []
    i = 0
    while i < len(entries):
        entry = entries[i]
        if entry:
            paths.append(entry[3:])
            if entry[0] in "RC":  # a rename or copy: the next entry is the source path
                i += 1
                paths.append(entries[i])
        i += 1
    return sorted(set(paths))


def revert(repo, paths):
    """Put each path back as it is in HEAD (removing files HEAD does not have)."""
    for path in paths:
        in_head = subprocess.run(["git", "cat-file", "-e", f"HEAD:{path}"], cwd=repo, capture_output=True).returncode == 0
        if in_head:
            _git(repo, "checkout", "HEAD", "--", path)
        else:
            _git(repo, "rm", "-q", "--cached", "--ignore-unmatch", "--", path)
            full = os.path.join(repo, path)
            if os.path.isdir(full) and not os.path.islink(full):
                shutil.rmtree(full, ignore_errors=True)
            elif os.path.lexists(full):
                os.remove(full)


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

    def _run(self, prompt):
        """(returncode, stdout, stderr); None for the return code when the CLI ran past the timeout."""
        self._process = subprocess.Popen(self.command(prompt), cwd=self.repo, stdin=subprocess.DEVNULL,
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
        head = _git(self.repo, "rev-parse", "HEAD").strip()
        try:
            returncode, out, err = self._run(system + "\n\n" + prompt)
        finally:
            if _git(self.repo, "rev-parse", "HEAD").strip() != head:  # it committed: undo, keep the changes
                _git(self.repo, "reset", "-q", "--soft", head)
            changed = changed_paths(self.repo)
            new = open(os.path.join(self.repo, "train.py"), encoding="utf-8").read() \
                if os.path.exists(os.path.join(self.repo, "train.py")) else ""
            revert(self.repo, changed)  # the loop writes the proposal back; the checkout stays clean
        text, prompt_tokens, completion_tokens, cost = self.parse_output(out or "")
        if cost is None:
            cost = self.pricing.cost(prompt_tokens, completion_tokens) if self.pricing else 0.0
        used = dict(model=self.model, prompt_tokens=prompt_tokens, completion_tokens=completion_tokens, cost_usd=cost)
        description = description_of(text) or next(
            (line.strip()[:200] for line in reversed(text.splitlines()) if line.strip()), None)
        others = [p for p in changed if p != "train.py"]
        if others:
            raise ProposalError(f"the {self.executable} CLI changed files other than train.py "
                                f"({', '.join(others)}); reverted", description=description, **used)
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
