"""
Attention kernels on one CUDA GPU at the gpu profile's shapes: milliseconds for the forward and backward
of one layer, for each backend this machine can load without internet, checked against a reference.

    python bench/gpu_attention.py [--batch 128] [--seq 2048] [--heads 4] [--head-dim 128]

train.py's default model has 8 layers, 6 of them with a window of half the context ("S") and 2 with
all of it ("L"); the last column sums a model's worth so backends compare at a glance.
"""

import argparse
import math
import sys

import torch
import torch.nn.functional as F


def bench(fn, warmup=25, rep=200):
    from triton.testing import do_bench
    return do_bench(fn, warmup=warmup, rep=rep, return_mode="median")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--seq", type=int, default=2048)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--head-dim", type=int, default=128)
    args = parser.parse_args()
    B, T, H, D = args.batch, args.seq, args.heads, args.head_dim
    W = T // 2
    print(f"torch {torch.__version__} | {torch.cuda.get_device_name()} | B {B} T {T} H {H} D {D} | S window {W}")
    torch.manual_seed(0)
    q, k, v = (torch.randn(B, H, T, D, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    dy = torch.randn(B, H, T, D, device="cuda", dtype=torch.bfloat16)

    from torch.nn.attention.flex_attention import create_block_mask, flex_attention
    masks = {w: create_block_mask(lambda b, h, qi, ki, w=w: (qi >= ki) & (qi - ki < w), None, None, T, T, device="cuda")
             for w in (W, T)}
    flex = torch.compile(flex_attention, dynamic=False)

    def flex_variant(options):
        return lambda w: flex(q, k, v, block_mask=masks[w], kernel_options=options)

    def sdpa_variant(backend):
        from torch.nn.attention import sdpa_kernel

        def run(w):
            if w < T:
                raise NotImplementedError("no window")
            with sdpa_kernel(backend):
                return F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return run

    def varlen(w):
        from torch.nn.attention.varlen import varlen_attn
        cu = torch.arange(0, (B + 1) * T, T, device="cuda", dtype=torch.int32)
        qv, kv, vv = (t.transpose(1, 2).reshape(B * T, H, D) for t in (q, k, v))
        y = varlen_attn(qv, kv, vv, cu, cu, T, T, window_size=(w - 1 if w < T else -1, 0))
        return y.view(B, T, H, D).transpose(1, 2)

    from torch.nn.attention import SDPBackend
    variants = {
        "flex (default)": flex_variant(None),
        "flex BLOCK 128x64 w8 s3": flex_variant({"BLOCK_M": 128, "BLOCK_N": 64, "num_warps": 8, "num_stages": 3}),
        "flex BLOCK 128x128 w8 s2": flex_variant({"BLOCK_M": 128, "BLOCK_N": 128, "num_warps": 8, "num_stages": 2}),
        "sdpa cudnn": sdpa_variant(SDPBackend.CUDNN_ATTENTION),
        "sdpa flash (FA2)": sdpa_variant(SDPBackend.FLASH_ATTENTION),
        "varlen_attn (FA2, window)": varlen,
    }
    # the reference: fp32 math on a slice of the batch
    i = torch.arange(T, device="cuda")
    reference = {}
    for w in (W, T):
        allowed = (i[:, None] >= i[None, :]) & (i[:, None] - i[None, :] < w)
        reference[w] = F.scaled_dot_product_attention(q[:2].float(), k[:2].float(), v[:2].float(), attn_mask=allowed)

    rows = []
    for name, fn in variants.items():
        row = [name]
        for w in (W, T):
            try:
                y = fn(w)
                err = ((y[:2].float() - reference[w]).norm() / reference[w].norm()).item()
                if not math.isfinite(err) or err > 2e-2:
                    row.append(f"wrong ({err:.1e})")
                    continue
                fwd = bench(lambda: fn(w))

                def fwd_bwd():
                    fn(w).backward(dy)
                total = bench(fwd_bwd)
                row.append((fwd, total, err))
            except Exception as e:
                row.append(f"{type(e).__name__}: {' '.join(str(e).split())[:60]}")
            q.grad = k.grad = v.grad = None
        rows.append(row)
        torch.cuda.empty_cache()

    print(f"\n{'backend':28} {'S fwd ms':>9} {'S f+b ms':>9} {'L fwd ms':>9} {'L f+b ms':>9} {'6S+2L f+b':>10}  rel err")
    for name, s, l in rows:
        cells, model = [], 0.0
        for cell, count in ((s, 6), (l, 2)):
            if isinstance(cell, tuple):
                cells += [f"{cell[0]:9.2f}", f"{cell[1]:9.2f}"]
                model = model + count * cell[1] if model is not None else None
            else:
                cells += [f"{'-':>9}", f"{'-':>9}"]
                model = None
        errs = " ".join(f"{c[2]:.1e}" for c in (s, l) if isinstance(c, tuple))
        total = "-" if model is None else f"{model:.1f}"
        print(f"{name:28} {' '.join(cells)} {total:>10}  {errs}")
        for cell in (s, l):
            if isinstance(cell, str):
                print(f"    {cell}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
