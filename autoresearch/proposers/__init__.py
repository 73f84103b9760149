"""
Proposers: given the current train.py, program.md, the campaign history and the last failure's
log tail, return a description and a new train.py. The loop, not the proposer, runs the experiment.

    proposer = get_proposer("search", repo=".", seed=0)
    proposal = proposer.propose(train_py, program_md, history, last_failure)

Errors, as the loop treats them:
  ProposalError   the proposer answered, but with nothing usable (after its own retries):
                  recorded as an `invalid` experiment.
  ProposerConfigError   a user mistake (no API key, SDK or CLI missing): one line, exit.
  anything else   transient (network, rate limit, a CLI that failed): back off and retry.
"""

import importlib
from dataclasses import dataclass


@dataclass
class Proposal:
    description: str
    train_py: str
    model: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    fidelity: float = 1.0  # the share of the time budget to run it with: < 1 is a screening run
    repeat: bool = False   # a repeated measurement: run it on a new seed


class ProposalError(Exception):
    """The proposer's answer could not be used. Carries what it cost, for the ledger."""

    def __init__(self, message, *, description=None, model=None, prompt_tokens=0, completion_tokens=0,
                 cost_usd=0.0):
        super().__init__(message)
        self.description = description
        self.model = model
        self.prompt_tokens = prompt_tokens
        self.completion_tokens = completion_tokens
        self.cost_usd = cost_usd


class ProposerConfigError(Exception):
    """A user mistake that retrying cannot fix; the message says what to do."""


class Proposer:
    """Base class. Subclasses set `name` and implement propose()."""

    name = "?"
    model = None
    endpoint = None  # where it sends its requests (a URL), for messages

    def check(self):
        """ProposerConfigError when the proposer cannot work at all (its server cannot be reached, the
        key is refused): the loop calls it before the baseline, so a campaign never trains for nothing."""

    def propose(self, train_py, program_md, history, last_failure):
        raise NotImplementedError

    def close(self):
        """Stop anything still running (e.g. a CLI subprocess); called on shutdown."""


# proposer name -> "module:class", imported on first use so an SDK is only needed when chosen
REGISTRY = {
    "search": "autoresearch.proposers.search:SearchProposer",
    "openai": "autoresearch.proposers.openai_api:OpenAIProposer",
    "anthropic": "autoresearch.proposers.anthropic_api:AnthropicProposer",
    "claude": "autoresearch.proposers.coding_cli:ClaudeProposer",
    "codex": "autoresearch.proposers.coding_cli:CodexProposer",
}


def get_proposer(name, **options):
    """The proposer called `name`, built with the options it knows (it ignores the others)."""
    if name not in REGISTRY:
        raise ProposerConfigError(f"unknown proposer {name!r}; choose one of: {', '.join(REGISTRY)}")
    module_name, class_name = REGISTRY[name].split(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    return cls(**options)
