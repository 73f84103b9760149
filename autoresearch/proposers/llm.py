"""
What the LLM proposers share: the prompt, the reply format and its parser, the retry loop, prices.

The reply format (stated in the prompt):

    DESCRIPTION: one line saying what changed and why

then either the complete new train.py in one ```python fenced block, or one or more edit blocks

    <<<<<<< SEARCH
    lines copied exactly from the current train.py
    =======
    the lines that replace them
    >>>>>>> REPLACE

A reply that cannot be used (no code, a SEARCH that does not match exactly once, invalid Python,
no change) is sent back with the reason, up to `attempts` times in all; then ProposalError.
"""

import ast
import re
import sys

from autoresearch.ledger import one_line
from autoresearch.proposers import Proposal, ProposalError, Proposer, ProposerConfigError

HISTORY_ROWS = 40        # the most recent experiments shown to the model
LOG_TAIL_CHARS = 3000    # of the last failure's log

# USD per million tokens (input, output): approximate public list prices, for the ledger's cost
# column and --max-cost. A model matches its entry exactly or with a date suffix
# ("claude-sonnet-4-5-20250929"); a provider prefix ("openai/") is dropped and dots count as dashes.
# Any other model: pass --price-input/--price-output, or its cost is recorded as 0 (and a note says so).
PRICES = {
    "gpt-4o-mini": (0.15, 0.60),
    "gpt-4o": (2.50, 10.00),
    "gpt-4.1-nano": (0.10, 0.40),
    "gpt-4.1-mini": (0.40, 1.60),
    "gpt-4.1": (2.00, 8.00),
    "gpt-5-nano": (0.05, 0.40),
    "gpt-5-mini": (0.25, 2.00),
    "gpt-5": (1.25, 10.00),
    "o3-mini": (1.10, 4.40),
    "o4-mini": (1.10, 4.40),
    "o3": (2.00, 8.00),
    "claude-3-5-haiku": (0.80, 4.00),
    "claude-haiku-4-5": (1.00, 5.00),
    "claude-3-7-sonnet": (3.00, 15.00),
    "claude-sonnet-4": (3.00, 15.00),
    "claude-sonnet-4-5": (3.00, 15.00),
    "claude-sonnet-4-6": (3.00, 15.00),
    "claude-opus-4": (15.00, 75.00),
    "claude-opus-4-1": (15.00, 75.00),
    "claude-opus-4-5": (5.00, 25.00),
    "claude-opus-4-6": (5.00, 25.00),
}


def _norm(name):
    return name.lower().rsplit("/", 1)[-1].replace(".", "-")


def price_of(model):
    """(input, output) USD per million tokens for a known model, else None."""
    name = _norm(model or "")
    for key, price in PRICES.items():
        if re.fullmatch(re.escape(_norm(key)) + r"(-\d{4}-?\d{2}-?\d{2}|-latest)?", name):
            return price
    return None


class Pricing:
    """The cost of a call: from --price-input/--price-output if given, else the table, else 0."""

    def __init__(self, model, price_input=None, price_output=None):
        if price_input is not None or price_output is not None:
            self.per_million = (float(price_input or 0), float(price_output or 0))
        else:
            self.per_million = price_of(model)
        self.known = self.per_million is not None
        if not self.known:
            print(f"note: no price known for model {model!r}: its cost is recorded as 0 "
                  f"(pass --price-input and --price-output, USD per million tokens)", file=sys.stderr)

    def cost(self, prompt_tokens, completion_tokens):
        if not self.known:
            return 0.0
        return (prompt_tokens * self.per_million[0] + completion_tokens * self.per_million[1]) / 1e6


REPLY_FORMAT = """Reply in exactly this format:

DESCRIPTION: <one line: what you changed and why>

and then EITHER the complete new train.py in a single fenced block:

```python
<the whole file>
```

OR one or more edit blocks, each exactly like this (the SEARCH lines copied exactly from the
current train.py, enough of them to match one place only):

<<<<<<< SEARCH
<lines of the current train.py>
=======
<the lines that replace them>
>>>>>>> REPLACE
"""

CLI_TASK = """Edit train.py in this directory to make that one change; edit no other file, and do
not run training or any other command: the harness runs the experiment. When you are done, end your
reply with one line:

DESCRIPTION: <one line: what you changed and why>
"""


def format_history(history):
    if not history:
        return "(none yet)"
    rows = history[-HISTORY_ROWS:]
    lines = [f"{len(history)} experiments so far" + (f", the last {len(rows)}:" if len(rows) < len(history) else ":")]
    lines.append("status   val_bpb   description")
    for row in rows:
        bpb = row.get("val_bpb")
        bpb = f"{bpb:.6f}" if isinstance(bpb, (int, float)) else "-"
        lines.append(f"{(row.get('status') or '?'):8} {bpb:9} {row.get('description') or ''}")
    kept = [r["val_bpb"] for r in history if r.get("status") == "keep" and r.get("val_bpb") is not None]
    if kept:
        lines.append(f"best val_bpb so far: {min(kept):.6f} (lower is better)")
    return "\n".join(lines)


def build_prompt(train_py, program_md, history, last_failure, *, cli=False):
    """(system, user) messages. With cli=True the model edits train.py itself (coding CLIs)."""
    system = ("You are an autonomous ML researcher improving a small GPT pretraining script. "
              "Each experiment trains for a fixed time budget and is judged by val_bpb on held-out "
              "data (lower is better). Propose ONE focused experiment at a time.")
    parts = ["# The research program (program.md)\n\n" + (program_md or "(no program.md)").strip()]
    if cli:
        parts.append("# train.py\n\nThe current train.py is in this directory; read it first.")
    else:
        parts.append("# The current train.py\n\n```python\n" + train_py.rstrip("\n") + "\n```")
    parts.append("# History of this campaign\n\n" + format_history(history))
    if last_failure:
        parts.append("# The last failed experiment's log tail\n\n```\n" + last_failure[-LOG_TAIL_CHARS:] + "\n```")
    parts.append("# Your task\n\nPropose the next experiment: one idea, likely to lower val_bpb, not "
                 "already tried above. Change only train.py. Do not change the random seed, the "
                 "evaluation or the time budget.\n\n" + (CLI_TASK if cli else REPLY_FORMAT))
    return system, "\n\n".join(parts)


class ReplyError(ValueError):
    """Why a reply could not be used; sent back to the model."""


def description_of(reply):
    for line in reply.splitlines():
        m = re.match(r"\s*\**DESCRIPTION\**\s*:\s*(.+)", line, re.IGNORECASE)
        if m:
            return one_line(m.group(1)).strip("*").strip()[:200]
    return None


def edit_blocks(reply):
    """[(search, replace)] from SEARCH/REPLACE blocks, in order."""
    blocks, state, search, replace = [], None, [], []
    for line in reply.splitlines():
        mark = line.strip()
        if state is None and mark.startswith("<<<<<<<") and "SEARCH" in mark:
            state, search, replace = "search", [], []
        elif state == "search" and mark.startswith("=======") and set(mark) == {"="}:
            state = "replace"
        elif state == "replace" and mark.startswith(">>>>>>>") and "REPLACE" in mark:
            blocks.append(("\n".join(search), "\n".join(replace)))
            state = None
        elif state == "search":
            search.append(line)
        elif state == "replace":
            replace.append(line)
    if state is not None:
        raise ReplyError("an edit block is not closed: each needs <<<<<<< SEARCH, =======, >>>>>>> REPLACE lines")
    return blocks


def apply_edits(train_py, blocks):
    new = train_py
    for n, (search, replace) in enumerate(blocks, 1):
        if not search.strip():
            raise ReplyError(f"edit block {n} has an empty SEARCH part")
        count = new.count(search)
        if count != 1:
            where = "does not match train.py" if count == 0 else f"matches {count} places in train.py"
            raise ReplyError(f"the SEARCH part of edit block {n} {where}; copy the lines exactly, "
                             f"with enough context to match one place only")
        new = new.replace(search, replace, 1)
    return new


def parse_reply(reply, train_py):
    """(description, new train.py) from a model's reply, or ReplyError saying what is wrong."""
    blocks = edit_blocks(reply)
    if blocks:
        new = apply_edits(train_py, blocks)
    else:
        fences = re.findall(r"^```[ \t]*(\w*)[ \t]*\n(.*?)^```", reply, re.DOTALL | re.MULTILINE)
        code = [body for lang, body in fences if lang.lower() in ("python", "py", "")]
        if not code:
            raise ReplyError("the reply has neither a ```python block nor SEARCH/REPLACE edit blocks")
        if len(code) > 1:
            raise ReplyError(f"the reply has {len(code)} code blocks; send the whole train.py in ONE ```python block")
        new = code[0]
        if len(new) < 0.5 * len(train_py):
            raise ReplyError("the new train.py is less than half the size of the current one: send the "
                             "complete file, or use SEARCH/REPLACE blocks for a partial edit")
    try:
        ast.parse(new)
    except SyntaxError as e:
        raise ReplyError(f"the new train.py is not valid Python: {e.msg} at line {e.lineno}")
    if new.strip() == train_py.strip():
        raise ReplyError("the new train.py is identical to the current one; change something")
    description = description_of(reply)
    if not description:
        outside = [l.strip() for l in reply.splitlines() if l.strip() and not l.strip().startswith(("```", "<<<<<<<"))]
        description = outside[0][:200] if outside else "(no description)"
    return description, new


class ChatProposer(Proposer):
    """An API proposer: subclasses implement chat(system, messages) -> (text, prompt_tokens, completion_tokens)."""

    default_model = None

    def __init__(self, model=None, price_input=None, price_output=None, attempts=3, **_ignored):
        self.model = model or self.default_model
        self.pricing = Pricing(self.model, price_input, price_output)
        self.attempts = max(1, int(attempts))

    def chat(self, system, messages):
        raise NotImplementedError

    # the SDK module (openai or anthropic: both name their errors alike) and its client, set by subclasses
    sdk = None
    client = None
    CHECK_TIMEOUT = 15.0

    @property
    def endpoint(self):
        return str(self.client.base_url) if self.client is not None else None

    def check(self):
        """One cheap request (list the models) with no retries: a server that answers at all, even 404
        (some compatible servers have no model list), is reachable; no answer or a refused key is not."""
        try:
            self.client.with_options(max_retries=0, timeout=self.CHECK_TIMEOUT).models.list()
        except (self.sdk.AuthenticationError, self.sdk.PermissionDeniedError) as e:
            raise ProposerConfigError(f"the {self.name} API at {self.endpoint} refused the key ({e.status_code}); "
                                      f"check the API key and --base-url")
        except self.sdk.APIConnectionError as e:
            raise ProposerConfigError(f"cannot reach the {self.name} proposer at {self.endpoint} "
                                      f"({type(e).__name__}: {e}); start the server or fix --base-url")
        except self.sdk.APIStatusError:
            pass

    def propose(self, train_py, program_md, history, last_failure):
        system, prompt = build_prompt(train_py, program_md, history, last_failure)
        messages = [{"role": "user", "content": prompt}]
        used = {"prompt_tokens": 0, "completion_tokens": 0}
        error = None
        for _ in range(self.attempts):
            text, prompt_tokens, completion_tokens = self.chat(system, messages)
            used["prompt_tokens"] += prompt_tokens or 0
            used["completion_tokens"] += completion_tokens or 0
            try:
                description, new = parse_reply(text or "", train_py)
            except ReplyError as e:
                error = e
                messages += [{"role": "assistant", "content": text or "(empty)"},
                             {"role": "user", "content": f"That reply could not be used: {e}.\n\n{REPLY_FORMAT}"}]
                continue
            return Proposal(description=description, train_py=new, model=self.model,
                            cost_usd=self.pricing.cost(used["prompt_tokens"], used["completion_tokens"]), **used)
        raise ProposalError(f"no usable reply in {self.attempts} attempts: {error}", model=self.model,
                            cost_usd=self.pricing.cost(used["prompt_tokens"], used["completion_tokens"]), **used)
