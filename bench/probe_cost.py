"""
What the causality probes cost: seconds of prepare.evaluate_bpb for train.py's model (as built,
untrained) on the active profile, with the probes re-running PROBED_ROWS rows (at least; or
PROBED_SHARE of the validation rows) against a few, as before (two batches).

    AUTORESEARCH_PROFILE=cpu python bench/probe_cost.py [--repeats 3] [--rows 8,512] [--train train.py]

Each figure is the median of --repeats evaluations in one process (after one untimed), each setting
in turn; the batch size is train.py's own. The metric is the same whatever the probes: they only
refuse a model.
"""

import argparse
import os
import statistics
import sys
import time

from trainsetup import setup_code

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--train", default=os.path.join(ROOT, "train.py"), help="the train.py to build the model of")
    parser.add_argument("--repeats", type=int, default=3, help="evaluations per setting (default 3)")
    parser.add_argument("--rows", default="8,512", help="PROBED_ROWS settings, comma-separated (default 8,512; "
                                                         "8 is the old two batches of 4 rows, without a share)")
    args = parser.parse_args(argv)
    settings = [int(x) for x in args.rows.split(",") if x.strip()]
    code, ns = setup_code(args.train)
    exec(code, ns)
    import prepare  # the one train.py imported (its folder is first on the path)
    model, tokenizer = ns["model"], ns["tokenizer"]
    batch_size = ns["device_batch_size"]
    model.eval()
    n_rows = prepare.EVAL_TOKENS // prepare.MAX_SEQ_LEN
    print(f"profile {prepare.PROFILE}: {n_rows} validation rows of {prepare.MAX_SEQ_LEN}, batches of {batch_size}")
    share = prepare.PROBED_SHARE
    with ns["autocast_ctx"]:  # once untimed: the first evaluation also loads the rows and warms the kernels up
        prepare.evaluate_bpb(model, tokenizer, batch_size)
    for rows in settings:
        prepare.PROBED_ROWS, prepare.PROBED_SHARE = rows, (share if rows >= 512 else 0.0)
        seconds = []
        for _ in range(args.repeats):
            t0 = time.time()
            with ns["autocast_ctx"]:
                bpb = prepare.evaluate_bpb(model, tokenizer, batch_size)
            seconds.append(time.time() - t0)
        probed = max(rows, prepare.PROBED_SHARE * n_rows)
        print(f"probed rows >= {probed:6.0f}: eval {statistics.median(seconds):6.2f} s median "
              f"({', '.join(f'{s:.2f}' for s in seconds)}), val_bpb {bpb:.6f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
