"""
The `search` proposer: no LLM. It searches the hyper-parameter block of train.py with a model of what
the campaign measured (Optuna: TPE by default, CMA-ES, or random local steps).

A knob is a top-level UPPER_CASE assignment with a literal value (int, float, str, bool, or
`2**N`) before the first def/class (the `by_device` helper aside). A per-device knob

    DEPTH = by_device(cuda=8, mps=4, cpu=4)   # number of transformer layers

has the value named for the campaign's device, and the search edits that value only, in place
(formatting and comments kept; the other devices' values stay). Each proposal changes one or two
knobs by a sensible step for their type and never repeats a configuration tried before in the
campaign (a fingerprint of the effective knob values of every experiment's train.py). The random
choices are seeded by (seed, number of experiments so far): the same campaign proposes the same.

The model (space.py beside this file): every knob gets a typed range around its value in
the campaign's base train.py, the Optuna study is rebuilt from the ledger's rows at every proposal
(the ledger is the only store: a killed loop resumes with the same model), and the sampler proposes
values for one to three knobs (SUBSPACE), the others staying at the current best's. The first STARTUP
proposals are random local steps (the `random` sampler's).
A near miss (beat the best by less than the keep threshold) is measured again on a new seed, once.
With screening, candidates first run at a fraction of the budget and the best of them earn a full run
(successive halving among the candidates screened on the current best: a keep starts a new rung); the
model then learns from the screened results (every candidate has one), compared only with each other.
"""

import ast
import hashlib
import random
import re
import subprocess
import warnings

import optuna
from optuna.distributions import CategoricalDistribution

from autoresearch.ledger import reference_of, was_starved
from autoresearch.proposers import Proposal, ProposalError, Proposer, ProposerConfigError, space

optuna.logging.set_verbosity(optuna.logging.WARNING)  # its per-trial lines would drown the loop's

KNOB_NAME = re.compile(r"[A-Z][A-Z0-9_]*$")
NEVER_MUTATED = ("SEED", "DEVICE_TYPE")  # a seed change is noise, not research
DEVICE_HELPER, DEVICES = "by_device", ("cuda", "mps", "cpu")  # train.py's by_device(cuda, mps, cpu)
WINDOW_PATTERNS = list(space.WINDOW_PATTERNS)
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


SAMPLERS = ("tpe", "cmaes", "random")
STARTUP = 4          # random local steps before the model proposes: a handful of points teach it nothing
ETA = 3              # successive halving: one full run per ETA screened candidates, for the best of them
FAIL_PENALTY = 0.1   # a crash or timeout counts as the worst val_bpb of its fidelity + 10% of it
CMA_WARM_START = 10  # results the warm start needs (it keeps the best 10%)
CMA_SIGMA0 = 0.1     # the step of CMA-ES around the best so far, in the normalised [0, 1] space
ASKS = 50            # model proposals to draw before falling back to a local step
SUBSPACE = (1, 2, 3)  # knobs the model varies in one proposal, the others staying at the best's: with a
                      # few dozen results over 20 knobs, a whole new configuration is mostly a random jump
                      # (measured: a 51-minute cpu campaign's TPE proposal changed 10 knobs and lost)


class Observation:
    """What the campaign measured of one configuration (one fingerprint), per fidelity."""

    def __init__(self, values):
        self.values = values  # {knob: value}
        self.rows = []
        self.full, self.screened = [], []                  # val_bpb of finished runs
        self.failed = {"full": 0, "screened": 0}           # crash / timeout
        self.pending = {"full": 0, "screened": 0}          # running (a swarm's experiments in flight)
        self.invalid = {"full": 0, "screened": 0}          # judged on nothing: no result, but tried
        self.baseline = False

    def results(self, fidelity):
        return self.full if fidelity == "full" else self.screened

    def measured(self, fidelity):
        return bool(self.results(fidelity)) or self.failed[fidelity] > 0

    def tried(self, fidelity):
        """Measured, running or invalid at this fidelity: a configuration not to run there again."""
        return self.measured(fidelity) or self.pending[fidelity] > 0 or self.invalid[fidelity] > 0

    def value(self, fidelity, penalty):
        """The mean val_bpb at this fidelity (repeats average out the noise); penalty if it only failed."""
        values = self.results(fidelity)
        return sum(values) / len(values) if values else penalty


def interrupted_or_starved(row):
    cause = row.get("cause") or ""
    return (row.get("status") == "crash" and cause.startswith("interrupted")) or was_starved(row)


def row_fidelity(row, full_budget):
    """"screened" for a run on a share of the budget (finished, in flight or crashed), else "full"."""
    budget = row.get("time_budget")
    if row.get("status") == "screened" or (full_budget and budget and budget < full_budget):
        return "screened"
    return "full"


def _seed(*parts):
    return int.from_bytes(hashlib.sha256(":".join(map(str, parts)).encode()).digest()[:4], "big")


class SearchProposer(Proposer):
    name = "search"

    def __init__(self, repo=".", seed=0, device=None, sampler="tpe", screen=None, **_ignored):
        if sampler not in SAMPLERS:
            raise ProposerConfigError(f"unknown search sampler {sampler!r}; choose one of: {', '.join(SAMPLERS)}")
        if screen is not None and not 0 < screen < 1:
            raise ProposerConfigError(f"--screen {screen:g} is not a fraction of the budget; give one in (0, 1), "
                                      f"e.g. --screen 0.3")
        self.repo = str(repo)
        self.seed = 0 if seed is None else seed
        self.device = device
        self.sampler = sampler
        self.screen = screen
        self._configs = {}      # (commit, device) -> {knob: value} of its train.py (None if unreadable)
        self._proposed = set()  # fingerprints proposed in this process

    # -- the ledger, read ---------------------------------------------------------------------------
    def _commit_train_py(self, sha):
        out = subprocess.run(["git", "show", f"{sha}:train.py"], cwd=self.repo, capture_output=True, text=True)
        return out.stdout if out.returncode == 0 else None

    def configuration(self, sha, device):
        """{knob: value} of the train.py of a commit, or None."""
        key = (sha, device)
        if key not in self._configs:
            text = self._commit_train_py(sha)
            try:
                self._configs[key] = {k: v.value for k, v in find_knobs(text, device).items()} if text else None
            except SyntaxError:
                self._configs[key] = None
        return self._configs[key]

    def observations(self, history, device):
        """{fingerprint: Observation} of every configuration the campaign ran or is running, in order.
        A run a stop interrupted or a starved run measured nothing about its configuration; an invalid
        one counts as tried only."""
        full_budget = max((r.get("time_budget") or 0 for r in history if r.get("is_baseline")), default=0)
        seen = {}
        for row in history:
            values = self.configuration(row["commit_sha"], device) if row.get("commit_sha") else None
            if values is None:
                continue
            obs = seen.setdefault(fingerprint(values), Observation(values))
            obs.rows.append(row)
            obs.baseline = obs.baseline or bool(row.get("is_baseline"))
            if interrupted_or_starved(row):
                continue
            fidelity, status = row_fidelity(row, full_budget), row.get("status")
            if status == "running":
                obs.pending[fidelity] += 1
            elif status in ("keep", "discard", "screened") and row.get("val_bpb") is not None:
                obs.results(fidelity).append(row["val_bpb"])
            elif status in ("crash", "timeout"):
                obs.failed[fidelity] += 1
            elif status == "invalid":
                obs.invalid[fidelity] += 1
        return seen

    def base_values(self, history, train_py, device):
        """The knob values the space is centred on: the campaign's first baseline's train.py."""
        for row in history:
            if row.get("is_baseline") and row.get("commit_sha"):
                values = self.configuration(row["commit_sha"], device)
                if values is not None:
                    return values
        return {k: v.value for k, v in find_knobs(train_py, device).items()}

    # -- proposing ----------------------------------------------------------------------------------
    def propose(self, train_py, program_md, history, last_failure):
        device = self.device or device_from_history(history) or detect_device()
        try:
            knobs = find_knobs(train_py, device)
        except SyntaxError as e:
            raise ProposalError(f"train.py does not parse ({e}); the search proposer needs valid Python")
        if not knobs:
            raise ProposalError("train.py has no knobs to search: top-level UPPER_CASE constants with literal values")
        current = {name: k.value for name, k in knobs.items()}
        observations = self.observations(history, device)
        tried = set(observations) | self._proposed | {fingerprint(current)}
        if self.screen:
            promoted = self.promotion(observations, current, device)
            if promoted is not None:
                ids = ", ".join(f"#{r['id']}" for r in promoted.rows if r.get("status") == "screened" and "id" in r)
                return self.proposal(train_py, knobs, current, promoted.values, 1.0,
                                     f"full run of screened {ids or 'candidate'}: ")
        near = self.near_miss(observations, history)
        if near is not None:
            row = [r for r in near.rows if r.get("val_bpb") is not None][0]
            proposal = self.proposal(train_py, knobs, current, near.values, 1.0,
                                     f"re-measure #{row.get('id')} on a new seed: ")
            proposal.repeat = True
            return proposal
        fidelity = "screened" if self.screen else "full"
        measured = [o for o in observations.values() if o.measured(fidelity)]
        rng = random.Random(f"{self.seed}:{len(history)}")
        changes = None
        if self.sampler != "random" and len([o for o in measured if not o.baseline]) >= STARTUP:
            space_ = self.space(history, train_py, knobs, device, observations)
            changes = self.ask(space_, list(observations.values()), fidelity, current, tried,
                               _seed(self.seed, len(history)))
        if changes is None:
            changes = local_step(knobs, current, tried, rng)
        prefix = f"screen {self.screen:.0%}: " if self.screen else ""
        return self.proposal(train_py, knobs, current, {**current, **changes}, self.screen or 1.0, prefix)

    def proposal(self, train_py, knobs, current, values, fidelity, prefix):
        changes = {name: v for name, v in values.items() if name in knobs and v != current[name]}
        self._proposed.add(fingerprint({**current, **changes}))
        description = ", ".join(f"{name} {format_value(knobs[name].kind, current[name])} -> "
                                f"{format_value(knobs[name].kind, value)}" for name, value in changes.items())
        return Proposal(description=prefix + description, train_py=apply_changes(train_py, knobs, changes),
                        fidelity=fidelity)

    def space(self, history, train_py, knobs, device, observations):
        observed = {}
        for obs in observations.values():
            for name, value in obs.values.items():
                observed.setdefault(name, []).append(value)
        kinds = {name: k.kind for name, k in knobs.items()}
        # centred on the base train.py's values; a knob an edit added since, on its value now
        center = {**{name: k.value for name, k in knobs.items()}, **self.base_values(history, train_py, device)}
        return space.build(center, kinds, observed)

    def make_sampler(self, seed, trials):
        if self.sampler == "cmaes":
            # warm-started CMA-ES: its search distribution is estimated at every proposal from the best of
            # the campaign's results (the study is rebuilt from the ledger: no optimizer state is kept). It
            # models the numeric knobs all results share; categories are sampled independently.
            numeric = [{n for n, d in t.distributions.items() if not isinstance(d, CategoricalDistribution)}
                       for t in trials]
            common = set.intersection(*numeric) if numeric else set()
            source = [optuna.trial.create_trial(params={n: t.params[n] for n in common}, value=t.value,
                                                distributions={n: t.distributions[n] for n in common})
                      for t in trials]
            warm = dict(source_trials=source) if common and len(source) >= CMA_WARM_START else {}
            if common and not warm:  # too few to estimate a distribution: start at the best so far
                best = min(source, key=lambda t: t.value)
                warm = dict(x0=best.params, sigma0=CMA_SIGMA0)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                warnings.simplefilter("ignore", FutureWarning)  # x0: deprecated in 4.9, removed in 6
                return optuna.samplers.CmaEsSampler(seed=seed, n_startup_trials=0, warn_independent_sampling=False,
                                                    **warm)
        # the liar: an experiment in flight counts as a bad result, so that no two run the same region
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=0, constant_liar=True)

    def ask(self, space_, observations, fidelity, current, tried, seed):
        """A configuration the model proposes (changes to `current`), untried; None if it finds none.
        Each configuration measured at this fidelity is a trial valued at its mean val_bpb; a crash or
        timeout is valued at a penalty (worse than anything that ran: its region is bad, not unknown)."""
        measured = [o for o in observations if o.measured(fidelity)]
        results = [v for o in measured for v in o.results(fidelity)]
        worst = max(results, default=1.0)
        penalty = worst + FAIL_PENALTY * abs(worst)

        def trial(obs, **result):
            params = space.params(space_, obs.values)
            return optuna.trial.create_trial(params=params, distributions={n: space_[n] for n in params}, **result)

        done = [trial(obs, value=obs.value(fidelity, penalty)) for obs in measured]
        model = self.make_sampler(seed, done)
        study = optuna.create_study(sampler=model)
        study.add_trials(done)
        for obs in observations:
            if obs.pending[fidelity]:
                study.add_trial(trial(obs, state=optuna.trial.TrialState.RUNNING))
        at_best, rng = space.params(space_, current), random.Random(seed)
        for _ in range(ASKS):
            free = set(rng.sample(sorted(at_best), min(len(at_best), rng.choice(SUBSPACE))))
            with warnings.catch_warnings():  # experimental since Optuna 2.4, and unchanged
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                study.sampler = optuna.samplers.PartialFixedSampler(
                    {name: value for name, value in at_best.items() if name not in free}, model)
            trial = study.ask(space_)
            values = {name: _round(value) for name, value in trial.params.items() if name in current}
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            changes = {name: v for name, v in values.items() if v != current[name]}
            if changes and fingerprint({**current, **changes}) not in tried:
                return changes
        return None

    def near_miss(self, observations, history):
        """The best configuration that beat the campaign's reference (the bar the keep rule compares with)
        by less than the keep threshold, measured once: the model is least sure there, so it is measured
        again (once) rather than left to chance."""
        best = reference_of(history)
        thresholds = [r["threshold"] for r in history if r.get("threshold")]
        if best is None or not thresholds:
            return None
        threshold = thresholds[-1]
        near = [o for o in observations.values() if not o.baseline and len(o.full) == 1 and not o.pending["full"]
                and not any(r.get("status") == "keep" for r in o.rows) and best - threshold <= o.full[0] < best]
        return min(near, key=lambda o: o.full[0]) if near else None

    def base_of(self, row, device):
        """The fingerprint of the configuration an experiment was proposed from: its parent commit's (the
        campaign's best when it started); None if unknown or unreadable."""
        values = self.configuration(row["parent_commit"], device) if row.get("parent_commit") else None
        return fingerprint(values) if values is not None else None

    def promotion(self, observations, current, device):
        """Successive halving on the current best: once ETA candidates screened on it per full run so far
        are in, the best of them with no full run earns one, if it ranks in their top 1/ETA. Candidates
        screened on an earlier best are left out: their configurations lack the keep since (a full run
        of one would undo it), and their short results were measured on another base."""
        here = fingerprint(current)
        screened = [o for o in observations.values() if o.measured("screened")
                    and any(self.base_of(r, device) == here for r in o.rows)]
        promoted = [o for o in screened if o.tried("full")]
        candidates = [o for o in screened if not o.tried("full") and o.screened and fingerprint(o.values) != here]
        if len(screened) < ETA * (len(promoted) + 1) or not candidates:
            return None
        ranked = sorted(o.value("screened", float("inf")) for o in screened)
        cutoff = ranked[max(0, len(ranked) // ETA - 1)]
        best = min(candidates, key=lambda o: o.value("screened", float("inf")))
        return best if best.value("screened", float("inf")) <= cutoff else None


def _round(value):
    return _round_float(value) if isinstance(value, float) else value


def local_step(knobs, current, tried, rng):
    """Changes to one or two knobs by a random step each (the `random` sampler, and the start of a
    campaign for the others), to a configuration not tried; ProposalError when none is left."""
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
        if changes and fingerprint({**current, **changes}) not in tried:
            return changes
    raise ProposalError(f"search found no untried configuration in {ATTEMPTS} draws around the current best")
