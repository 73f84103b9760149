"""
The search space of train.py's knobs: an Optuna distribution per knob, typed by the knob's kind and
centred on its value in the campaign's base train.py, so that the space stays put while the best moves.

    float       log-uniform [v/4, 4v]; a fraction (RATIO, FRAC, PROB, DROPOUT) uniform [0, max(2v, 0.3)]
                within [0, 1]; a beta or momentum in [0.8, 1) uniform in 1 - (1-v)·[1/3, 3]; 0.0: [0, 0.1]
    int         [max(1, v-2), v+4]; above 16 log-uniform [v/2, 2v]
    power of 2  (2**N, an int power of 2 from 16 or a BATCH/SIZE) the powers from v/4 to 4v, as categories
    bool        False, True
    pattern     the attention window patterns (S: short, L: long)
A value the campaign ran outside its range (an agent's edit) widens the range to hold it.
"""

from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

WINDOW_PATTERNS = ("L", "SL", "SSL", "SSSL", "SSLL", "SLSL")
FRACTION_WORDS = ("RATIO", "FRAC", "PROB", "DROPOUT")


def is_pow2(value):
    return isinstance(value, int) and not isinstance(value, bool) and value > 0 and value & (value - 1) == 0


def distribution(name, kind, value):
    """The range a knob is searched in, around `value`."""
    if kind == "bool":
        return CategoricalDistribution((False, True))
    if kind == "pattern":
        return CategoricalDistribution(WINDOW_PATTERNS + ((value,) if value not in WINDOW_PATTERNS else ()))
    if kind == "pow2" or (kind == "int" and is_pow2(value) and (value >= 16 or "BATCH" in name or "SIZE" in name)):
        return CategoricalDistribution(tuple(sorted({max(1, value // 4), max(1, value // 2), value, value * 2,
                                                     value * 4})))
    if kind == "int":
        if value > 16:
            return IntDistribution(value // 2, value * 2, log=True)
        if value > 0:
            return IntDistribution(max(1, value - 2), value + 4)
        return IntDistribution(value - 4, value + 2)
    if any(word in name for word in FRACTION_WORDS) and 0.0 <= value <= 1.0:
        return FloatDistribution(0.0, min(1.0, max(2 * value, 0.3)))
    if 0.8 <= value < 1.0:
        return FloatDistribution(1 - (1 - value) * 3, 1 - (1 - value) / 3)
    if value == 0.0:
        return FloatDistribution(0.0, 0.1)
    if value > 0:
        return FloatDistribution(value / 4, value * 4, log=True)
    return FloatDistribution(value * 4, value / 4)


def fits(dist, value):
    """Whether `value` is of the distribution's type (an int knob that became a float does not fit)."""
    if isinstance(dist, CategoricalDistribution):
        return type(value) in {type(c) for c in dist.choices}
    if isinstance(dist, IntDistribution):
        return type(value) is int and (not dist.log or value >= 1)
    return type(value) in (int, float) and (not dist.log or value > 0)


def widen(dist, value):
    """The distribution, grown to hold `value` (which fits it)."""
    if isinstance(dist, CategoricalDistribution):
        return dist if value in dist.choices else CategoricalDistribution(dist.choices + (value,))
    if dist.low <= value <= dist.high:
        return dist
    cls = IntDistribution if isinstance(dist, IntDistribution) else FloatDistribution
    return cls(min(dist.low, value), max(dist.high, value), log=dist.log)


def build(center, kinds, observed):
    """{name: distribution} for the knobs in `kinds` ({name: kind}), centred on `center` ({name: value},
    the base train.py's values; a knob the base lacks is centred on its first observed value) and widened
    to every observed value ({name: [values]})."""
    space = {}
    for name, kind in sorted(kinds.items()):
        values = observed.get(name, [])
        start = center.get(name, values[0] if values else None)
        if start is None:
            continue
        dist = distribution(name, kind, start)
        if not fits(dist, start):
            continue
        for v in values:
            if fits(dist, v):
                dist = widen(dist, v)
        space[name] = dist
    return space


def params(space, values):
    """The trial parameters of a configuration: its values of the space's knobs that fit."""
    return {name: values[name] for name, dist in space.items() if name in values and fits(dist, values[name])}
