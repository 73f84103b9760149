"""
What the data loader costs the training thread, on the `gpu` profile's rules (128 x 2048 micro-batches).

    AUTORESEARCH_CACHE=$PWD/.gpucache python prepare.py --profile gpu --source sotu   # once (scripts/gpu_check.sh prepare)
    AUTORESEARCH_CACHE=$PWD/.gpucache python bench/loader.py [--batches 50] [--step-ms 175] [--old-val]

Prints, as medians over --batches batches after a warm-up:
  - the packing work alone (pack_token_rows in this thread): what the background thread spends per batch;
  - the loader back to back (next(loader) with nothing in between): the training thread waits for packing;
  - the loader with a simulated GPU step of --step-ms between batches (time.sleep, which releases the GIL
    as a CUDA step mostly does): the wait the training thread sees when packing overlaps the step;
  - the same with a step that holds the GIL throughout (pure Python work): the worst case for a thread;
  - the old loader (tokenize and pack in the training thread; the oracle kept in tests/test_loader.py);
  - the time to load the validation rows (and, with --old-val, to pack them the old way: ~20 s);
  - the prepare-time cost and size of the token files, rebuilt in a temporary folder.
The device is CUDA when there is one (pinned memory, non-blocking copies), else the CPU.
"""

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))
os.environ.setdefault("AUTORESEARCH_PROFILE", "gpu")

import torch  # noqa: E402

import prepare  # noqa: E402
from test_loader import old_dataloader, old_val_rows  # noqa: E402  (the loader as it was, for comparison)

B, T = 128, prepare.MAX_SEQ_LEN


def timed(next_batch, n, warmup, between=None, sync=lambda: None):
    """Median and max milliseconds of next_batch() over n calls after warm-up."""
    times = []
    for i in range(warmup + n):
        if between:
            between()
        t0 = time.perf_counter()
        next_batch()
        sync()
        if i >= warmup:
            times.append(1000 * (time.perf_counter() - t0))
    return statistics.median(times), max(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, default=50)
    parser.add_argument("--step-ms", type=float, default=175.0, help="simulated GPU step between batches")
    parser.add_argument("--old-batches", type=int, default=20, help="batches of the old loader (each ~0.2-1 s)")
    parser.add_argument("--old-val", action="store_true", help="also time packing the val rows the old way")
    args = parser.parse_args()
    device = prepare._default_device()
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    tok = prepare.Tokenizer.from_directory()
    tokens, offsets = prepare._train_arrays()
    print(f"profile {prepare.PROFILE} ({prepare.PROFILE_DIR}), source {prepare.data_source()}; B={B}, T={T}; "
          f"{len(offsets) - 1:,} train documents, {len(tokens):,} tokens; device {prepare.device_name(device)}")

    packer = prepare.pack_token_rows(tokens, offsets, B, T + 1, tok.get_bos_token_id())
    med, worst = timed(lambda: next(packer), args.batches, 3)
    print(f"packing alone (background thread's work):      median {med:7.1f} ms/batch (max {worst:.1f})")

    loader = prepare.make_dataloader(tok, B, T, "train", device=device)
    med, worst = timed(lambda: next(loader), args.batches, 5, sync=sync)
    print(f"new loader, back to back (training thread):     median {med:7.1f} ms/batch (max {worst:.1f})")
    loader.close()

    loader = prepare.make_dataloader(tok, B, T, "train", device=device)
    step = lambda: time.sleep(args.step_ms / 1000)
    med, worst = timed(lambda: next(loader), args.batches, 5, between=step, sync=sync)
    print(f"new loader, {args.step_ms:g} ms step between (training thread): median {med:7.1f} ms/batch (max {worst:.1f})")
    loader.close()

    # worst case for a thread: a step that holds the GIL throughout (pure Python work, calibrated to --step-ms)
    # competes with the packing thread; what it costs shows as a longer step + next() than the step alone
    n = 1 << 16
    while True:
        t0 = time.perf_counter()
        sum(range(n))
        if time.perf_counter() - t0 > 0.02:
            break
        n *= 2
    n = int(n * args.step_ms / 1000 / (time.perf_counter() - t0))
    python_step = lambda: sum(range(n))
    alone, _ = timed(python_step, 10, 1)
    loader = prepare.make_dataloader(tok, B, T, "train", device=device)
    with_loader, worst = timed(lambda: (python_step(), next(loader)), args.batches, 5, sync=sync)
    print(f"new loader, {alone:.0f} ms GIL-holding step between (training thread): median "
          f"{with_loader - alone:7.1f} ms/batch over the step alone (max {worst - alone:.1f})")
    loader.close()

    old = old_dataloader(tok, B, T, "train")
    def old_next():
        rows, _ = next(old)
        rows = rows.pin_memory() if device == "cuda" else rows
        rows.to(device, non_blocking=True)
    med, worst = timed(old_next, args.old_batches, 2, sync=sync)
    print(f"old loader (tokenize + pack in the training thread): median {med:7.1f} ms/batch (max {worst:.1f})")

    prepare._VAL_ROWS = None
    t0 = time.perf_counter()
    rows = prepare._val_rows(tok)
    print(f"val rows {tuple(rows.shape)}: loaded in {time.perf_counter() - t0:.3f} s")
    if args.old_val:
        t0 = time.perf_counter()
        assert torch.equal(old_val_rows(tok), rows)
        print(f"val rows packed the old way (what every run used to do): {time.perf_counter() - t0:.1f} s")

    work = tempfile.mkdtemp(prefix="autoresearch-bench-loader-")
    try:
        t0 = time.perf_counter()
        prepare.write_train_tokens(tok, prepare._manifest("train"), prepare.PROFILE_DIR, work)
        t_train = time.perf_counter() - t0
        t0 = time.perf_counter()
        prepare.write_val_rows(tok, prepare._manifest("val"), prepare.PROFILE_DIR, work, len(rows), T + 1)
        t_val = time.perf_counter() - t0
        size = lambda name: os.path.getsize(os.path.join(work, name)) / 1e6
        print(f"prepare time: train_tokens.npy + train_offsets.npy {t_train:.1f} s "
              f"({size('train_tokens.npy'):.1f} + {size('train_offsets.npy'):.1f} MB); "
              f"val_rows.npy {t_val:.1f} s ({size('val_rows.npy'):.1f} MB)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
