"""
What the trusted evaluation costs, and what it could cost: train.py's model (as built, untrained),
exported as the hand-off exports it, then evaluated as autoresearch/evaluator.py does and in variants.

    AUTORESEARCH_PROFILE=gpu python bench/gpu_eval.py [--train train.py]

Variants (each from a fresh load of the same program, in one process):
- evaluator: evaluator.evaluate_program as the harness runs it (block-sparse attention, compiled, fp32);
- dense masks: the same without the block-sparse rewrite (the evaluator before it);
- bf16 (CUDA only): the program's dtype assertions (aten._assert_tensor_metadata) removed and the
  evaluation run under bf16 autocast, as train.py evaluates when run by hand.
For each: seconds of the first evaluation (compilation included) and of a second one (the kernels
compiled), and the val_bpb, which for an untrained model only tells whether the variants agree.
"""

import argparse
import os
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LOOP_MARKER = "# Training loop"


def build(train_path):
    """train.py's namespace up to its training loop: model, tokenizer, batch size, torch."""
    head, found, _ = open(train_path, encoding="utf-8").read().partition(LOOP_MARKER)
    if not found:
        sys.exit(f"error: {train_path} has no '{LOOP_MARKER}' section to stop before")
    sys.path.insert(0, os.path.dirname(os.path.abspath(train_path)))
    ns = {"__name__": "train_setup", "__file__": os.path.abspath(train_path)}
    exec(compile(head, train_path, "exec"), ns)
    return ns


def strip_dtype_asserts(module, torch):
    removed = 0
    for node in list(module.graph.nodes):
        if node.op == "call_function" and node.target is torch.ops.aten._assert_tensor_metadata.default:
            module.graph.erase_node(node)
            removed += 1
    module.recompile()
    return removed


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train", default="train.py")
    args = parser.parse_args()
    ns = build(args.train)
    torch, model = ns["torch"], ns["raw_model"]
    import prepare  # train.py's own, beside it (build() put its folder first on the path)
    sys.path.insert(0, ROOT)
    from autoresearch import evaluator
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
        module = evaluator.check_program(torch.export.load(path)).module()
        return module, time.time() - t

    def evaluator_variant():
        module, loaded = load()
        replaced = evaluator.block_sparse_attention(module) if cuda else 0
        return torch.compile(module, dynamic=False) if cuda else module, loaded, f"{replaced} attention calls block-sparse"

    def dense_variant():
        module, loaded = load()
        return torch.compile(module, dynamic=False) if cuda else module, loaded, "masks as exported"

    def bf16_variant():
        module, loaded = load()
        removed = strip_dtype_asserts(module, torch)
        replaced = evaluator.block_sparse_attention(module)
        return torch.compile(module, dynamic=False), loaded, f"{removed} dtype asserts removed, {replaced} block-sparse"

    variants = [("evaluator", evaluator_variant, False), ("dense masks", dense_variant, False)]
    if cuda:
        variants.append(("bf16 autocast", bf16_variant, True))
    rows = []
    for name, make, autocast in variants:
        try:
            module, loaded, note = make()
            context = torch.autocast("cuda", dtype=torch.bfloat16) if autocast else torch.autocast("cpu", enabled=False)
            times, value = [], None
            for _ in range(2):
                t = time.time()
                with context:
                    value = prepare.evaluate_bpb(module, tokenizer, batch_size)
                times.append(time.time() - t)
            rows.append((name, loaded, times[0], times[1], value, note))
        except Exception as e:
            rows.append((name, None, None, None, None, f"{type(e).__name__}: {' '.join(str(e).split())[:80]}"))
        print(rows[-1], flush=True)
        if cuda:
            torch.cuda.empty_cache()
    print(f"\n{'variant':14} {'load+check':>10} {'1st eval':>9} {'2nd eval':>9} {'val_bpb':>9}  note")
    for name, loaded, first, second, value, note in rows:
        cells = [f"{x:.1f}" if isinstance(x, float) else "-" for x in (loaded, first, second)]
        bpb = f"{value:.4f}" if isinstance(value, float) else "-"
        print(f"{name:14} {cells[0]:>10} {cells[1]:>9} {cells[2]:>9} {bpb:>9}  {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
