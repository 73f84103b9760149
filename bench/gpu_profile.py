"""
Where a training step's time goes on the GPU: train.py's own set-up (model, optimizer, loader, compile),
then its step (forward + backward per micro-batch, optimizer) under torch.profiler.

    AUTORESEARCH_PROFILE=gpu python bench/gpu_profile.py [--train train.py] [--steps 4] [--rows 30]

Runs train.py's text up to its training loop, so the step profiled is exactly the one it trains with.
Prints the median step time of 8 steps after the compiling ones, then the kernels by GPU time.
"""

import argparse
import statistics
import sys
import time

from trainsetup import setup_code


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train", default="train.py")
    parser.add_argument("--steps", type=int, default=4, help="steps under the profiler")
    parser.add_argument("--rows", type=int, default=30)
    args = parser.parse_args()
    code, ns = setup_code(args.train)
    exec(code, ns)
    torch, model, optimizer, loader = ns["torch"], ns["model"], ns["optimizer"], ns["train_loader"]
    accum, autocast_ctx = ns["grad_accum_steps"], ns["autocast_ctx"]
    state, sync = {"x": ns["x"], "y": ns["y"]}, ns["sync"]

    def step():
        for _ in range(accum):
            with autocast_ctx:
                loss = model(state["x"], state["y"])
            (loss / accum).backward()
            state["x"], state["y"], _ = next(loader)
        optimizer.step()
        model.zero_grad(set_to_none=True)
        return loss

    t0 = time.time()
    step().item()
    print(f"first step (compile): {time.time() - t0:.1f} s")
    for _ in range(4):
        step()
    times = []
    for _ in range(8):
        sync()
        t0 = time.time()
        step()
        sync()
        times.append(time.time() - t0)
    median = statistics.median(times)
    print(f"step: median {median * 1000:.1f} ms over 8 ({min(times) * 1000:.1f}-{max(times) * 1000:.1f}) = "
          f"{ns['TOTAL_BATCH_SIZE'] / median:,.0f} tokens/s")
    from torch.profiler import ProfilerActivity, profile
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    with profile(activities=activities) as prof:
        for _ in range(args.steps):
            step()
        sync()
    table = prof.key_averages().table(sort_by="self_cuda_time_total" if torch.cuda.is_available() else "self_cpu_time_total", row_limit=args.rows, max_name_column_width=60)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
