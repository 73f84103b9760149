"""
Where train.py's start-up goes: its text up to the training loop (imports, device, tokenizer, model,
optimizer, attention masks, loader, first batch) run under cProfile, in a fresh interpreter.

    AUTORESEARCH_PROFILE=gpu python bench/startup.py [--train train.py] [--rows 25]

Prints the wall time of `import torch` and of the set-up, then the functions with the most
cumulative time (the top of the call tree first). The first compiled step is not in it:
bench/gpu_profile.py times that.
"""

import argparse
import cProfile
import pstats
import sys
import time

from trainsetup import setup_code


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train", default="train.py")
    parser.add_argument("--rows", type=int, default=25)
    args = parser.parse_args()
    code, ns = setup_code(args.train)
    t0 = time.time()
    import torch  # noqa: F401  (what every train.py pays first)
    imported = time.time() - t0
    profiler = cProfile.Profile()
    t0 = time.time()
    profiler.runctx(code, ns, ns)
    setup = time.time() - t0
    print(f"import torch: {imported:.2f} s | set-up after it: {setup:.2f} s "
          f"(train.py says startup {time.time() - ns['t_start']:.2f} s)")
    pstats.Stats(profiler, stream=sys.stdout).strip_dirs().sort_stats("cumulative").print_stats(args.rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
