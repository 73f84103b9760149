"""
What the trusted evaluation costs, and what it could cost: train.py's model (as built, or trained --steps),
exported as the hand-off exports it, then evaluated as autoresearch/evaluator.py does and in variants.

    AUTORESEARCH_PROFILE=gpu python bench/gpu_eval.py [--train train.py]

Variants (each from a fresh load of the same program, in one process):
- evaluator: evaluator.evaluate_program's GPU path as the harness runs it (block-sparse attention,
  the dtype checks dropped, compiled with a variable batch size, under bf16 autocast as train.py
  evaluates by hand);
- ahead: the same, compiled ahead from another copy of the program (evaluator.prepare_ahead, as while
  an experiment trains; its time is the "prepared" column), the program then taken in;
- static: compiled for the evaluation's batch size only (the evaluator before the variable batch);
- fp32: the same in the program's own dtypes (fp32, TF32 matmuls), the evaluator before bf16;
- eager bf16: not compiled (no compilation to pay or load from a cache: dense masks, SDPA picks its
  kernel), the dtype checks dropped, under bf16 autocast: is compiling worth it for one evaluation?
On a CPU only the evaluator's own path (eager, fp32) runs, and ahead.
For each: seconds from the loaded program to the first val_bpb (compilation included), of a second
evaluation (the kernels compiled), and the val_bpb. --steps N trains the model N steps first
(train.py's own step, compiled), so that the variants' val_bpb compare on a model that has learned
something.
"""

import argparse
import os
import sys
import tempfile
import time

from trainsetup import setup_code

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def build(train_path):
    """train.py's namespace up to its training loop: model, tokenizer, batch size, torch."""
    code, ns = setup_code(train_path)
    exec(code, ns)
    return ns


def train(ns, steps):
    """Train steps with train.py's own compiled model, optimizer and loader (its loop, without the clock)."""
    model, optimizer, loader, accum = ns["model"], ns["optimizer"], ns["train_loader"], ns["grad_accum_steps"]
    x, y = ns["x"], ns["y"]
    for _ in range(steps):
        for _ in range(accum):
            with ns["autocast_ctx"]:
                loss = model(x, y)
            (loss / accum).backward()
            x, y, _ = next(loader)
        optimizer.step()
        model.zero_grad(set_to_none=True)
    print(f"train loss after {steps} steps: {loss.item():.4f}")
    optimizer.state.clear()  # the evaluations need the memory


def as_exported(ns):
    """Switch train.py's attention to SDPA with the same windows, as it does before its evaluation:
    an exported program holds neither flex_attention's block masks nor FA3's kernel."""
    if ns["ATTENTION_BACKEND"] in ("flex", "fa3"):
        ns["ATTENTION_BACKEND"] = "sdpa"
        ns["_masks"].clear()
        ns["make_attention_masks"](ns["MAX_SEQ_LEN"], ns["raw_model"].windows, ns["device"])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train", default="train.py")
    parser.add_argument("--steps", type=int, default=0, help="train this many steps before exporting")
    parser.add_argument("--variants", help="the variants to run, comma-separated (default: all)")
    args = parser.parse_args()
    ns = build(args.train)
    torch, model = ns["torch"], ns["raw_model"]
    if args.steps:
        t0 = time.time()
        train(ns, args.steps)
        print(f"trained {args.steps} steps: {time.time() - t0:.1f} s")
    as_exported(ns)
    import prepare  # train.py's own, beside it (build() put its folder first on the path)
    sys.path.insert(0, ROOT)
    from autoresearch import evaluator, modelfile
    tokenizer, batch_size = ns["tokenizer"], ns["device_batch_size"]
    cuda = next(model.parameters()).device.type == "cuda"
    path = os.path.join(tempfile.mkdtemp(prefix="gpu-eval-"), "model.pt2")
    t0 = time.time()
    prepare.export_model(model, batch_size, path)
    print(f"export: {time.time() - t0:.1f} s ({os.path.getsize(path) / 2**20:.0f} MB)")
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True

    def load():
        t = time.time()
        module = modelfile.module_of(modelfile.load_program(path))
        return module, time.time() - t

    def evaluator_variant():
        module, loaded = load()
        if not cuda:
            return module, torch.autocast("cpu", enabled=False), loaded, "eager, fp32", None
        fast, precision, rows = evaluator.for_gpu(module, evaluator.trial_rows(prepare, tokenizer))
        return fast, precision, loaded, f"block-sparse, no dtype checks, bf16 autocast, batch <= {rows}", rows

    def ahead_variant():
        t = time.time()
        prepared = evaluator.prepare_ahead(path, prepare, tokenizer)
        ahead = time.time() - t
        module, loaded = load()
        assert prepared is not None and prepared.take(module), "the program was not taken"
        return prepared.fast, prepared.precision, loaded, f"prepared ahead in {ahead:.1f} s (not counted)", \
            prepared.max_rows

    def static_variant():
        module, loaded = load()
        evaluator.block_sparse_attention(module)
        evaluator.drop_dtype_checks(module)
        fast, precision = torch.compile(module, dynamic=False), torch.autocast("cuda", dtype=torch.bfloat16)
        with torch.no_grad(), precision:
            fast(prepare._val_rows(tokenizer)[:batch_size, :-1].to("cuda"))
        return fast, precision, loaded, "as evaluator, compiled for one batch size", None

    def fp32_variant():
        module, loaded = load()
        replaced = evaluator.block_sparse_attention(module)
        return torch.compile(module, dynamic=False), torch.autocast("cuda", enabled=False), loaded, \
            f"{replaced} attention calls block-sparse, fp32/TF32", None

    def eager_variant():
        module, loaded = load()
        removed = evaluator.drop_dtype_checks(module)
        return module, torch.autocast("cuda", dtype=torch.bfloat16), loaded, f"{removed} dtype checks dropped, eager", None

    variants = [("evaluator", evaluator_variant), ("ahead", ahead_variant)]
    if cuda:
        variants += [("static", static_variant), ("fp32", fp32_variant), ("eager bf16", eager_variant)]
    if args.variants:
        variants = [(name, make) for name, make in variants if name in args.variants.split(",")]
    rows = []
    for name, make in variants:
        try:
            t = time.time()
            module, context, loaded, note, max_rows = make()
            made = time.time() - t  # load and check, and for the evaluator its compilation
            times, value = [], None
            for _ in range(2):
                t = time.time()
                with context:
                    value = prepare.evaluate_bpb(module, tokenizer, evaluator.batch_rows(batch_size, max_rows) if max_rows else batch_size)
                times.append(time.time() - t)
            rows.append((name, loaded, made + times[0], times[1], value, note))
        except Exception as e:
            rows.append((name, None, None, None, None, f"{type(e).__name__}: {' '.join(str(e).split())[:80]}"))
        print(rows[-1], flush=True)
        if cuda:
            torch.cuda.empty_cache()
    print(f"\n{'variant':14} {'load+check':>10} {'to 1st value':>12} {'2nd eval':>9} {'val_bpb':>9}  note")
    for name, loaded, first, second, value, note in rows:
        cells = [f"{x:.1f}" if isinstance(x, float) else "-" for x in (loaded, first, second)]
        bpb = f"{value:.4f}" if isinstance(value, float) else "-"
        print(f"{name:14} {cells[0]:>10} {cells[1]:>12} {cells[2]:>9} {bpb:>9}  {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
