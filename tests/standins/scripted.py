"""A proposer for tests: it follows a script instead of asking anyone."""

from autoresearch.proposers import Proposal, Proposer


class Scripted(Proposer):
    """A proposer that follows a script: (description, {knob: value}[, {Proposal field: value}]) steps,
    or exceptions to raise."""
    name = "scripted"

    def __init__(self, script):
        self.script = list(script)
        self.calls = []

    def propose(self, train_py, program_md, history, last_failure):
        self.calls.append(dict(history=history, last_failure=last_failure))
        step = self.script.pop(0)
        if isinstance(step, BaseException):
            raise step
        description, knobs, *more = step
        for name, value in knobs.items():
            lines = [f"{name} = {value!r}" if line.startswith(f"{name} = ") else line
                     for line in train_py.splitlines()]
            train_py = "\n".join(lines) + "\n"
        return Proposal(description=description, train_py=train_py, model="scripted-1", prompt_tokens=10,
                        completion_tokens=5, cost_usd=0.5, **(more[0] if more else {}))
