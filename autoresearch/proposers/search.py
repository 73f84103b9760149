"""
The `search` proposer: no LLM. It mutates the hyper-parameter block of train.py.

A knob is a top-level UPPER_CASE assignment with a literal value (int, float, str, bool, or
`2**N`) before the first def/class (the `by_device` helper aside). A per-device knob

    DEPTH = by_device(cuda=8, mps=4, cpu=4)   # number of transformer layers

has the value named for the campaign's device, and the search edits that value only, in place
(formatting and comments kept; the other devices' values stay). Each proposal changes one or two
knobs by a sensible step for their type and never repeats a configuration tried before in the
campaign (a fingerprint of the effective knob values of every experiment's train.py). The random
choices are seeded by (seed, number of experiments so far): the same campaign proposes the same.
"""

import ast
import random
import re
import subprocess

from autoresearch.proposers import Proposal, ProposalError, Proposer

KNOB_NAME = re.compile(r"[A-Z][A-Z0-9_]*$")
NEVER_MUTATED = ("SEED", "DEVICE_TYPE")  # a seed change is noise, not research
DEVICE_HELPER, DEVICES = "by_device", ("cuda", "mps", "cpu")  # train.py's by_device(cuda, mps, cpu)
WINDOW_PATTERNS = ["L", "SL", "SSL", "SSSL", "SSLL", "SLSL"]
FLOAT_FACTORS = [1.25, 1.5, 2.0]
ATTEMPTS = 600  # random draws before giving up; the step radius widens every 100


class Knob:
    """One knob: its value on the device, the expression of that value, and the statement it is in."""

    def __init__(self, name, value, kind, node, stmt):
        self.name, self.value, self.kind, self.node, self.stmt = name, value, kind, node, stmt

    def __repr__(self):
        return f"Knob({self.name}={self.value!r}, {self.kind})"


def literal(node):
    """(value, kind) of a knob's value expression, or None when it is not a plain literal."""
    if isinstance(node, ast.Constant):
        v = node.value
        if isinstance(v, bool):
            return v, "bool"
        if isinstance(v, int):
            return v, "int"
        if isinstance(v, float):
            return v, "float"
        if isinstance(v, str) and v and set(v) <= {"S", "L"}:  # an attention window pattern
            return v, "pattern"
        return None
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        inner = literal(node.operand)
        if inner and inner[1] in ("int", "float"):
            return -inner[0], inner[1]
        return None
    if (isinstance(node, ast.BinOp) and isinstance(node.op, ast.Pow)
            and isinstance(node.left, ast.Constant) and node.left.value == 2 and type(node.left.value) is int
            and isinstance(node.right, ast.Constant) and type(node.right.value) is int
            and 0 <= node.right.value <= 62):
        return 2 ** node.right.value, "pow2"
    return None


def device_value(node, device):
    """The expression of a knob's value on `device`: the matching argument of `by_device(cuda=, mps=, cpu=)`
    (keywords, or positional in that order), else the expression itself; None when by_device lacks it."""
    if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == DEVICE_HELPER):
        return node
    arguments = dict(zip(DEVICES, node.args))
    arguments.update((k.arg, k.value) for k in node.keywords)
    return arguments.get(device)


def find_knobs(source, device):
    """{name: Knob} of the knobs, with their values on `device` (raises SyntaxError for invalid Python)."""
    knobs = {}
    for stmt in ast.parse(source).body:
        if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            if stmt.name == DEVICE_HELPER:
                continue
            break  # the hyper-parameter block ends where the code starts
        if not (isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name)
                and KNOB_NAME.match(stmt.targets[0].id)):
            continue
        name = stmt.targets[0].id
        if any(word in name for word in NEVER_MUTATED):
            continue
        node = device_value(stmt.value, device)
        lit = literal(node)  # None as well where by_device gives the device no value
        if lit is None:
            knobs.pop(name, None)  # a computed value overrides the literal: not a knob any more
        else:
            knobs[name] = Knob(name, lit[0], lit[1], node, stmt)
    return knobs


def fingerprint(values):
    return tuple(sorted((name, repr(value)) for name, value in values.items()))


def format_value(kind, value):
    if kind == "pow2":
        return f"2**{value.bit_length() - 1}"
    if kind == "pattern":
        return f'"{value}"'
    return repr(value)


def _round_float(x):
    return float(f"{x:.3g}")


def neighbours(knob_name, kind, value):
    """The values one step away from `value` for a knob of this kind."""
    if kind == "bool":
        return [not value]
    if kind == "pattern":
        return [p for p in WINDOW_PATTERNS if p != value]
    if kind == "pow2":
        return [value * 2] + ([value // 2] if value >= 2 else [])
    if kind == "int":
        if value == 0:
            return [1]
        if value > 0 and value & (value - 1) == 0:  # a power of two: halve or double
            return [value * 2] + ([value // 2] if value >= 2 else [])
        if abs(value) <= 16:
            steps = [value + 1, value - 1]
            return [v for v in steps if v != 0 and (v > 0) == (value > 0)]
        return sorted({round(value * 1.25), round(value / 1.25)} - {value})
    # float
    fraction = any(word in knob_name for word in ("RATIO", "FRAC", "PROB", "DROPOUT"))
    if value == 0.0:
        return [0.05, 0.1]
    if 0.8 <= value < 1.0:  # betas, momenta: step the distance to 1
        out = [_round_float(1 - (1 - value) * f) for f in FLOAT_FACTORS]
        out += [_round_float(1 - (1 - value) / f) for f in FLOAT_FACTORS]
    else:
        out = [_round_float(value * f) for f in FLOAT_FACTORS] + [_round_float(value / f) for f in FLOAT_FACTORS]
    if fraction:
        out = [v for v in out if 0.0 <= v <= 1.0]
    return sorted(set(out) - {value})


def apply_changes(source, knobs, changes):
    """`source` with each changed knob's value text replaced in place."""
    data = source.encode()
    line_starts = [0]
    for line in data.splitlines(keepends=True):
        line_starts.append(line_starts[-1] + len(line))
    offset = lambda line, col: line_starts[line - 1] + col  # ast offsets are UTF-8 bytes
    spans = []
    for name, value in changes.items():
        node, stmt = knobs[name].node, knobs[name].stmt
        spans.append((offset(node.lineno, node.col_offset), offset(node.end_lineno, node.end_col_offset),
                      offset(stmt.end_lineno, stmt.end_col_offset), format_value(knobs[name].kind, value).encode()))
    for start, end, stmt_end, text in sorted(spans, reverse=True):
        rest = data[stmt_end:]
        gap = re.match(rb" +(?=#)", rest)  # keep an inline comment in its column where there is room
        if gap and b"\n" not in data[start:stmt_end]:
            old_gap = gap.end()
            new_gap = max(min(2, old_gap), old_gap - (len(text) - (end - start)))
            rest = b" " * new_gap + rest[old_gap:]
        data = data[:start] + text + data[end:stmt_end] + rest
    return data.decode()


def device_type(row):
    """cuda/mps/cpu of one experiment: the `device:` line of its log, else a guess from its device name."""
    m = re.search(r"^device:\s*(cuda|mps|cpu)\b", row.get("log_tail") or "", re.MULTILINE)
    if m:
        return m.group(1)
    name = (row.get("device") or "").lower()
    for kind, words in (("cuda", ("cuda", "nvidia", "gpu")), ("mps", ("mps", "apple")), ("cpu", ("cpu",))):
        if any(word in name for word in words):
            return kind
    return None


def device_from_history(history):
    """cuda/mps/cpu of the campaign's last experiment that says, or None."""
    for row in reversed(history):
        kind = device_type(row)
        if kind:
            return kind
    return None


_detected = []


def detect_device():
    if not _detected:
        import torch  # only when the ledger cannot tell
        if torch.cuda.is_available():
            _detected.append("cuda")
        elif getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            _detected.append("mps")
        else:
            _detected.append("cpu")
    return _detected[0]


class SearchProposer(Proposer):
    name = "search"

    def __init__(self, repo=".", seed=0, device=None, **_ignored):
        self.repo = str(repo)
        self.seed = 0 if seed is None else seed
        self.device = device
        self._seen = {}        # commit -> fingerprint of its train.py (None if unreadable)
        self._proposed = set()  # fingerprints proposed in this process

    def _commit_train_py(self, sha):
        out = subprocess.run(["git", "show", f"{sha}:train.py"], cwd=self.repo, capture_output=True, text=True)
        return out.stdout if out.returncode == 0 else None

    def tried(self, history, device):
        """Fingerprints of the configurations of every experiment in the history."""
        seen = set(self._proposed)
        for row in history:
            sha = row.get("commit_sha")
            if not sha:
                continue
            key = (sha, device)
            if key not in self._seen:
                text = self._commit_train_py(sha)
                try:
                    fp = fingerprint({k: v.value for k, v in find_knobs(text, device).items()}) if text else None
                except SyntaxError:
                    fp = None
                self._seen[key] = fp
            if self._seen[key] is not None:
                seen.add(self._seen[key])
        return seen

    def propose(self, train_py, program_md, history, last_failure):
        device = self.device or device_from_history(history) or detect_device()
        try:
            knobs = find_knobs(train_py, device)
        except SyntaxError as e:
            raise ProposalError(f"train.py does not parse ({e}); the search proposer needs valid Python")
        if not knobs:
            raise ProposalError("train.py has no knobs to search: top-level UPPER_CASE constants with literal values")
        current = {name: k.value for name, k in knobs.items()}
        tried = self.tried(history, device) | {fingerprint(current)}
        rng = random.Random(f"{self.seed}:{len(history)}")
        names = sorted(knobs)
        for attempt in range(ATTEMPTS):
            radius = 1 + attempt // 100
            chosen = rng.sample(names, min(len(names), 1 if rng.random() < 0.6 else 2))
            changes = {}
            for name in chosen:
                value = current[name]
                for _ in range(radius):
                    options = neighbours(name, knobs[name].kind, value)
                    if not options:
                        break
                    value = rng.choice(options)
                if value != current[name]:
                    changes[name] = value
            if not changes:
                continue
            fp = fingerprint({**current, **changes})
            if fp in tried:
                continue
            self._proposed.add(fp)
            description = ", ".join(f"{name} {format_value(knobs[name].kind, current[name])} -> "
                                    f"{format_value(knobs[name].kind, value)}" for name, value in changes.items())
            return Proposal(description=description, train_py=apply_changes(train_py, knobs, changes))
        raise ProposalError(f"search found no untried configuration in {ATTEMPTS} draws around the current best")
