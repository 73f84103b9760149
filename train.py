"""
Pretrain a small GPT for a fixed wall-clock budget and report val_bpb. This is the one file the
research agent edits: model, optimizer, training loop, hyper-parameters, all of it is fair game.
The rules (data, tokenizer, context length, time budget, the metric) live in prepare.py/constants.py.

    python train.py                            # the active profile (see constants.py)
    AUTORESEARCH_PROFILE=cpu python train.py   # a named one

Runs on CUDA (bf16, torch.compile), Apple MPS and plain CPU (fp32) with per-device defaults below.
"""

import gc
import math
import os
import resource
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from constants import BUDGET_OVERRIDDEN, PROFILE
from prepare import (MAX_SEQ_LEN, TIME_BUDGET, Tokenizer, data_source, device_name, evaluate_bpb, get_peak_flops,
                     is_hopper, load_flash_attention_3, make_dataloader)

t_start = time.time()
DEVICE_TYPE = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"


def by_device(cuda, mps, cpu):
    """The value of a per-device hyper-parameter on this machine's device."""
    return {"cuda": cuda, "mps": mps, "cpu": cpu}[DEVICE_TYPE]


# ---------------------------------------------------------------------------
# Hyper-parameters, one line each. by_device(...) holds a value per device; a run uses the one for the
# device it prints (`device:`). On CUDA: the reference values, tuned for one H100 in 5 minutes. A CPU does
# about a thousandth of an H100's work in the same time: a tiny model that sees more tokens does best
# there, and 4-row micro-batches keep the logits in cache (tuned on the `cpu` profile, see BENCHMARKS.md).
# On a GPU with much less memory than an H100, lower DEVICE_BATCH_SIZE: gradient accumulation keeps
# TOTAL_BATCH_SIZE, so the results stay the same, only slower.

# Model
DEPTH = by_device(cuda=8, mps=4, cpu=4)                    # number of transformer layers
ASPECT_RATIO = by_device(cuda=64, mps=64, cpu=16)          # width = DEPTH * ASPECT_RATIO rounded up to a multiple of HEAD_DIM
HEAD_DIM = by_device(cuda=128, mps=64, cpu=64)             # width of one attention head
WINDOW_PATTERN = by_device(cuda="SSSL", mps="L", cpu="L")  # attention window per layer, cycled: S = half the context, L = all
# Batch
TOTAL_BATCH_SIZE = by_device(cuda=2**19, mps=2**15, cpu=2**12)  # tokens per optimizer step
DEVICE_BATCH_SIZE = by_device(cuda=128, mps=32, cpu=4)          # rows per forward/backward (gradients accumulate)
# Optimization
EMBEDDING_LR = 0.6        # AdamW, token embedding and value embeddings
UNEMBEDDING_LR = 0.004    # AdamW, output head
MATRIX_LR = 0.04          # Muon, every matrix inside the blocks
SCALAR_LR = 0.5           # AdamW, per-layer residual mixing scalars
WEIGHT_DECAY = 0.2        # Muon's cautious weight decay, decayed linearly to 0 over the run
ADAM_BETAS = (0.8, 0.95)
WARMUP_RATIO = 0.0        # fraction of the budget spent warming the learning rate up
WARMDOWN_RATIO = 0.5      # fraction of the budget spent decaying it linearly...
FINAL_LR_FRAC = 0.0       # ...to this fraction of the peak

# ---------------------------------------------------------------------------
# Model: GPT with rotary embeddings, QK-norm, ReLU^2 MLP, value embeddings, sliding windows


@dataclass
class GPTConfig:
    sequence_len: int
    vocab_size: int
    n_layer: int
    n_head: int
    n_kv_head: int
    n_embd: int
    window_pattern: str


def norm(x):
    return F.rms_norm(x, (x.size(-1),))  # parameter-free RMSNorm


def has_value_embedding(layer, n_layer):
    return layer % 2 == (n_layer - 1) % 2  # alternating layers, always including the last


def apply_rotary(x, cos, sin):
    d = x.size(-1) // 2
    x1, x2 = x[..., :d], x[..., d:]
    return torch.cat([x1 * cos + x2 * sin, x2 * cos - x1 * sin], dim=-1)


# Attention backend: Flash Attention 3 on Hopper (prepare.py fetches it), flex_attention on other CUDA
# GPUs, PyTorch's SDPA elsewhere. All take (B, T, H, D) here and return the same.
fa3 = load_flash_attention_3() if is_hopper() else None
if fa3 is not None:
    ATTENTION_BACKEND = "fa3"
elif DEVICE_TYPE == "cuda":
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention
    ATTENTION_BACKEND = "flex"
else:
    ATTENTION_BACKEND = "sdpa"
_masks = {}  # (T, window) -> mask, made once before compilation by make_attention_masks


def make_attention_masks(T, windows, device):
    for window in set(windows):
        if ATTENTION_BACKEND == "flex":
            sliding_causal = lambda b, h, qi, ki, window=window: (qi >= ki) & (qi - ki < window)
            _masks[T, window] = create_block_mask(sliding_causal, None, None, T, T, device=device)
        elif ATTENTION_BACKEND == "sdpa" and window < T:
            i = torch.arange(T, device=device)
            _masks[T, window] = (i[:, None] >= i[None, :]) & (i[:, None] - i[None, :] < window)


def attention(q, k, v, window):
    """Causal attention over the last `window` positions (the query's own included)."""
    T = q.size(1)
    if ATTENTION_BACKEND == "fa3":
        return fa3.flash_attn_func(q, k, v, causal=True, window_size=(window - 1 if window < T else -1, 0))
    q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    gqa = q.size(1) != k.size(1)
    if ATTENTION_BACKEND == "flex":
        y = flex_attention(q, k, v, block_mask=_masks[T, window], enable_gqa=gqa)
    elif window >= T:
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)
    else:
        if (T, window) not in _masks:
            make_attention_masks(T, [window], q.device)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=_masks[T, window], enable_gqa=gqa)
    return y.transpose(1, 2)


class CausalSelfAttention(nn.Module):
    def __init__(self, config, layer):
        super().__init__()
        self.n_head, self.n_kv_head = config.n_head, config.n_kv_head
        self.head_dim = config.n_embd // config.n_head
        self.c_q = nn.Linear(config.n_embd, self.n_head * self.head_dim, bias=False)
        self.c_k = nn.Linear(config.n_embd, self.n_kv_head * self.head_dim, bias=False)
        self.c_v = nn.Linear(config.n_embd, self.n_kv_head * self.head_dim, bias=False)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=False)
        # value-embedding gate: 2*sigmoid(W x[:32]) per head, W zero so it starts at 1
        self.ve_gate = nn.Linear(32, self.n_kv_head, bias=False) if has_value_embedding(layer, config.n_layer) else None

    def forward(self, x, ve, cos_sin, window):
        B, T, _ = x.size()
        q = self.c_q(x).view(B, T, self.n_head, self.head_dim)
        k = self.c_k(x).view(B, T, self.n_kv_head, self.head_dim)
        v = self.c_v(x).view(B, T, self.n_kv_head, self.head_dim)
        if ve is not None:  # ResFormer: mix a per-token value embedding into v
            gate = 2 * torch.sigmoid(self.ve_gate(x[..., :32]))
            v = v + gate.unsqueeze(-1) * ve.view(B, T, self.n_kv_head, self.head_dim).to(v.dtype)
        cos, sin = cos_sin
        q, k = norm(apply_rotary(q, cos, sin)), norm(apply_rotary(k, cos, sin))
        y = attention(q, k, v, window)
        return self.c_proj(y.reshape(B, T, -1))


class MLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=False)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=False)

    def forward(self, x):
        return self.c_proj(F.relu(self.c_fc(x)).square())


class Block(nn.Module):
    def __init__(self, config, layer):
        super().__init__()
        self.attn = CausalSelfAttention(config, layer)
        self.mlp = MLP(config)

    def forward(self, x, ve, cos_sin, window):
        x = x + self.attn(norm(x), ve, cos_sin, window)
        return x + self.mlp(norm(x))


class GPT(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        kv_dim = config.n_kv_head * (config.n_embd // config.n_head)
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.blocks = nn.ModuleList([Block(config, i) for i in range(config.n_layer)])
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)  # untied from wte
        self.value_embeds = nn.ModuleDict({str(i): nn.Embedding(config.vocab_size, kv_dim)
                                           for i in range(config.n_layer) if has_value_embedding(i, config.n_layer)})
        # x = resid_lambdas[i] * x + x0_lambdas[i] * x0 before every block
        self.resid_lambdas = nn.Parameter(torch.ones(config.n_layer))
        self.x0_lambdas = nn.Parameter(torch.full((config.n_layer,), 0.1))
        self.windows = self.window_sizes(config)
        self.register_buffer("cos", torch.empty(0), persistent=False)  # rotary tables, filled by init_weights
        self.register_buffer("sin", torch.empty(0), persistent=False)

    @staticmethod
    def window_sizes(config):
        full, half = config.sequence_len, config.sequence_len // 2
        sizes = [{"L": full, "S": half}[config.window_pattern[i % len(config.window_pattern)]]
                 for i in range(config.n_layer)]
        sizes[-1] = full  # the last layer always sees the whole context
        return sizes

    @torch.no_grad()
    def init_weights(self):
        bound = 3 ** 0.5 * self.config.n_embd ** -0.5  # uniform with the std of N(0, 1/width)
        nn.init.normal_(self.wte.weight, std=1.0)
        nn.init.normal_(self.lm_head.weight, std=0.001)
        for block in self.blocks:
            for lin in (block.attn.c_q, block.attn.c_k, block.attn.c_v, block.mlp.c_fc):
                nn.init.uniform_(lin.weight, -bound, bound)
            nn.init.zeros_(block.attn.c_proj.weight)  # every block starts as the identity
            nn.init.zeros_(block.mlp.c_proj.weight)
            if block.attn.ve_gate is not None:
                nn.init.zeros_(block.attn.ve_gate.weight)
        for emb in self.value_embeds.values():
            nn.init.uniform_(emb.weight, -bound, bound)
        self.resid_lambdas.fill_(1.0)
        self.x0_lambdas.fill_(0.1)
        head_dim = self.config.n_embd // self.config.n_head
        device = self.wte.weight.device
        inv_freq = 1.0 / (10000 ** (torch.arange(0, head_dim, 2, dtype=torch.float32, device=device) / head_dim))
        angles = torch.outer(torch.arange(self.config.sequence_len, dtype=torch.float32, device=device), inv_freq)
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32  # q, k stay in autocast's bf16
        self.cos, self.sin = (f(angles)[None, :, None, :].to(dtype) for f in (torch.cos, torch.sin))  # (1, T, 1, D/2)
        make_attention_masks(self.config.sequence_len, self.windows, device)

    def num_params(self):
        return sum(p.numel() for p in self.parameters())

    def flops_per_token(self):
        """Forward + backward FLOPs per token: 6 per matmul weight, plus attention scores."""
        embeddings = self.wte.weight.numel() + sum(e.weight.numel() for e in self.value_embeds.values())
        scalars = self.resid_lambdas.numel() + self.x0_lambdas.numel()
        matmul_params = self.num_params() - embeddings - scalars
        attn = sum(12 * self.config.n_embd * min(w, self.config.sequence_len) for w in self.windows)
        return 6 * matmul_params + attn

    def forward(self, idx, targets=None):
        T = idx.size(1)
        cos_sin = self.cos[:, :T], self.sin[:, :T]
        x = x0 = norm(self.wte(idx))
        for i, block in enumerate(self.blocks):
            x = self.resid_lambdas[i] * x + self.x0_lambdas[i] * x0
            ve = self.value_embeds[str(i)](idx) if str(i) in self.value_embeds else None
            x = block(x, ve, cos_sin, self.windows[i])
        logits = self.lm_head(norm(x)).float()
        logits = 15 * torch.tanh(logits / 15)  # soft-cap
        if targets is None:
            return logits
        return F.cross_entropy(logits.flatten(0, 1), targets.reshape(-1))

# ---------------------------------------------------------------------------
# Optimizer: Muon (with Polar Express + NorMuon) for the block matrices, AdamW for the rest

POLAR_EXPRESS_COEFFS = [
    (8.156554524902461, -22.48329292557795, 15.878769915207462),
    (4.042929935166739, -2.808917465908714, 0.5000178451051316),
    (3.8916678022926607, -2.772484153217685, 0.5060648178503393),
    (3.285753657755655, -2.3681294933425376, 0.46449024233003106),
    (2.3465413258596377, -1.7097828382687081, 0.42323551169305323),
]
# bf16 on GPUs (fast tensor cores); fp32 on CPU, where bf16 matmuls are ~50x slower
ORTHO_DTYPE = torch.bfloat16 if DEVICE_TYPE == "cuda" else torch.float32
maybe_compile = (lambda f: torch.compile(f, dynamic=False, fullgraph=True)) if DEVICE_TYPE == "cuda" else (lambda f: f)


def polar_express(G):
    """Map a stack of matrices (N, m, n) to the nearest (semi-)orthogonal ones: singular values -> ~1."""
    X = G.to(ORTHO_DTYPE)
    X = X / (X.norm(dim=(-2, -1), keepdim=True) * 1.02 + 1e-6)
    wide = X.size(-2) <= X.size(-1)
    if not wide:
        X = X.mT  # iterate on the short side: A is the smaller Gram matrix
    for a, b, c in POLAR_EXPRESS_COEFFS:
        A = X @ X.mT
        B = b * A + c * (A @ A)
        X = a * X + B @ X
    return X if wide else X.mT


@maybe_compile
def muon_step(params, grads, momentum_buf, second_moment, lr, momentum, wd, beta2=0.95):
    """One Muon step on a stack of same-shape matrices, in place."""
    # Nesterov momentum
    momentum_buf.lerp_(grads, 1 - momentum)
    update = grads.lerp(momentum_buf, momentum)
    update = polar_express(update).float()
    # NorMuon: normalise each row (or column, along the longer side) by a running RMS, then restore the norm
    reduce_dim = -1 if update.size(-2) >= update.size(-1) else -2
    sq = update.square().mean(dim=reduce_dim, keepdim=True)
    second_moment.lerp_(sq, 1 - beta2)
    norm_before = update.norm(dim=(-2, -1), keepdim=True)
    update = update * second_moment.clamp_min(1e-10).rsqrt()
    update = update * (norm_before / update.norm(dim=(-2, -1), keepdim=True).clamp_min(1e-10))
    # cautious weight decay: only where the update and the parameter agree in sign
    agree = (update * params) >= 0
    params.sub_(lr * update + lr * wd * params * agree)


@maybe_compile
def adamw_step(param, grad, exp_avg, exp_avg_sq, step, lr, beta1, beta2, eps=1e-10):
    exp_avg.lerp_(grad, 1 - beta1)
    exp_avg_sq.lerp_(grad.square(), 1 - beta2)
    m = exp_avg / (1 - beta1 ** step)
    v = exp_avg_sq / (1 - beta2 ** step)
    param.sub_(lr * m / (v.sqrt() + eps))


class MuonAdamW(torch.optim.Optimizer):
    """Param groups with kind="adamw" (betas) or kind="muon" (same-shape matrices, stepped as one stack)."""

    def __init__(self, param_groups):
        super().__init__(param_groups, defaults={})
        for group in self.param_groups:
            group["initial_lr"] = group["lr"]
        self.scalars = {}  # name -> 0-D tensor: compiled steps see changing numbers as data, not as constants

    def scalar(self, name, value):
        t = self.scalars.setdefault(name, torch.zeros((), dtype=torch.float32))
        t.fill_(value)
        return t

    @torch.no_grad()
    def step(self):
        for i, group in enumerate(self.param_groups):
            if group["kind"] == "adamw":
                for j, p in enumerate(group["params"]):
                    if p.grad is None:  # a parameter the model no longer uses
                        continue
                    state = self.state[p]
                    if not state:
                        state["step"] = 0
                        state["exp_avg"] = torch.zeros_like(p)
                        state["exp_avg_sq"] = torch.zeros_like(p)
                    state["step"] += 1
                    adamw_step(p, p.grad, state["exp_avg"], state["exp_avg_sq"],
                               self.scalar(f"{i}.{j}.step", state["step"]), self.scalar(f"{i}.lr", group["lr"]),
                               self.scalar(f"{i}.beta1", group["betas"][0]), self.scalar(f"{i}.beta2", group["betas"][1]))
            else:
                params = [p for p in group["params"] if p.grad is not None]
                if not params:
                    continue
                state = self.state[group["params"][0]]
                stacked = torch.stack(params)
                grads = torch.stack([p.grad for p in params])
                if not state or state["momentum_buffer"].shape != grads.shape:
                    state["momentum_buffer"] = torch.zeros_like(grads)
                    tall = grads.size(-2) >= grads.size(-1)  # NorMuon keeps one statistic per row if tall, per column if wide
                    state["second_moment"] = torch.zeros_like(grads[..., :1] if tall else grads[..., :1, :])
                rows, cols = params[0].shape
                lr = group["lr"] * max(1.0, rows / cols) ** 0.5
                muon_step(stacked, grads, state["momentum_buffer"], state["second_moment"], self.scalar(f"{i}.lr", lr),
                          self.scalar(f"{i}.momentum", group["momentum"]), self.scalar(f"{i}.wd", group["weight_decay"]))
                for p, new in zip(params, stacked.unbind(0)):
                    p.copy_(new)


def build_optimizer(model):
    width_scale = (model.config.n_embd / 768) ** -0.5  # the AdamW lrs were tuned at width 768
    matrices = [p for p in model.blocks.parameters()]
    assert all(p.ndim == 2 for p in matrices)
    groups = [
        dict(kind="adamw", params=[model.wte.weight], lr=EMBEDDING_LR * width_scale, betas=ADAM_BETAS),
        dict(kind="adamw", params=[e.weight for e in model.value_embeds.values()], lr=EMBEDDING_LR * width_scale, betas=ADAM_BETAS),
        dict(kind="adamw", params=[model.lm_head.weight], lr=UNEMBEDDING_LR * width_scale, betas=ADAM_BETAS),
        dict(kind="adamw", params=[model.resid_lambdas], lr=SCALAR_LR * 0.01, betas=ADAM_BETAS),
        dict(kind="adamw", params=[model.x0_lambdas], lr=SCALAR_LR, betas=(0.96, 0.95)),
    ]
    for shape in sorted({p.shape for p in matrices}):
        groups.append(dict(kind="muon", params=[p for p in matrices if p.shape == shape], lr=MATRIX_LR,
                           momentum=0.95, weight_decay=WEIGHT_DECAY))
    return MuonAdamW([g for g in groups if g["params"]])

# ---------------------------------------------------------------------------
# Set-up

torch.manual_seed(int(os.environ.get("AUTORESEARCH_SEED", "42")))
if DEVICE_TYPE == "cuda":
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
device = torch.device(DEVICE_TYPE)
autocast_ctx = torch.amp.autocast(device_type="cuda", dtype=torch.bfloat16) if DEVICE_TYPE == "cuda" else nullcontext()
sync = {"cuda": torch.cuda.synchronize, "mps": torch.mps.synchronize}.get(DEVICE_TYPE, lambda: None)

tokenizer = Tokenizer.from_directory()
width = math.ceil(DEPTH * ASPECT_RATIO / HEAD_DIM) * HEAD_DIM
config = GPTConfig(sequence_len=MAX_SEQ_LEN, vocab_size=tokenizer.get_vocab_size(), n_layer=DEPTH,
                   n_head=width // HEAD_DIM, n_kv_head=width // HEAD_DIM, n_embd=width, window_pattern=WINDOW_PATTERN)
with torch.device("meta"):
    model = GPT(config)
model.to_empty(device=device)
model.init_weights()
num_params = model.num_params()
flops_per_token = model.flops_per_token()
optimizer = build_optimizer(model)
raw_model = model
if DEVICE_TYPE == "cuda":
    model = torch.compile(model, dynamic=False)

device_batch_size = min(DEVICE_BATCH_SIZE, TOTAL_BATCH_SIZE // MAX_SEQ_LEN)  # a long context fits fewer rows
tokens_per_fwdbwd = device_batch_size * MAX_SEQ_LEN
assert device_batch_size > 0 and TOTAL_BATCH_SIZE % tokens_per_fwdbwd == 0, \
    f"TOTAL_BATCH_SIZE ({TOTAL_BATCH_SIZE}) must be a multiple of DEVICE_BATCH_SIZE x MAX_SEQ_LEN ({tokens_per_fwdbwd})"
grad_accum_steps = TOTAL_BATCH_SIZE // tokens_per_fwdbwd
peak_flops = get_peak_flops(DEVICE_TYPE, torch.bfloat16 if DEVICE_TYPE == "cuda" else torch.float32)
# under `autoresearch run`, the harness's training clock starts when the training loader is made
train_loader = make_dataloader(tokenizer, device_batch_size, MAX_SEQ_LEN, "train", device=device)
x, y, epoch = next(train_loader)
# the first steps compile kernels on CUDA: they train but do not count toward the budget
untimed_steps = 10 if DEVICE_TYPE == "cuda" else 1

print(f"profile: {PROFILE} | device: {device_name(DEVICE_TYPE)} | attention: {ATTENTION_BACKEND}")
print(f"model: {num_params / 1e6:.1f}M params, depth {DEPTH}, width {width}, {config.n_head} heads, "
      f"windows {raw_model.windows}, vocab {config.vocab_size}, seq {MAX_SEQ_LEN}")
print(f"batch: {TOTAL_BATCH_SIZE:,} tokens/step = {device_batch_size} x {MAX_SEQ_LEN} x {grad_accum_steps} accumulation")
print(f"budget: {TIME_BUDGET:g}s of training{' (overridden: not comparable)' if BUDGET_OVERRIDDEN else ''}")


def lr_multiplier(progress):
    if progress < WARMUP_RATIO:
        return progress / WARMUP_RATIO
    if progress <= 1 - WARMDOWN_RATIO:
        return 1.0
    cooldown = (1 - progress) / WARMDOWN_RATIO
    return cooldown + (1 - cooldown) * FINAL_LR_FRAC

# ---------------------------------------------------------------------------
# Training loop: runs until TIME_BUDGET seconds of training have passed

t_startup = time.time() - t_start
step, training_time, smooth_loss, shown_at = 0, 0.0, 0.0, 0.0
on_terminal = sys.stdout.isatty()  # a terminal: one step line rewritten in place; run.log: a line every 5 s
while True:
    sync()
    t0 = time.time()
    for _ in range(grad_accum_steps):
        with autocast_ctx:
            loss = model(x, y)
        (loss / grad_accum_steps).backward()
        x, y, epoch = next(train_loader)  # fetch the next batch while the device works
    progress = min(training_time / TIME_BUDGET, 1.0)
    for group in optimizer.param_groups:
        group["lr"] = group["initial_lr"] * lr_multiplier(progress)
        if group["kind"] == "muon":
            group["momentum"] = 0.85 + 0.10 * min(step / 300, 1.0)  # warm the momentum up over 300 steps
            group["weight_decay"] = WEIGHT_DECAY * (1 - progress)
    optimizer.step()
    model.zero_grad(set_to_none=True)
    train_loss = loss.item()
    if not math.isfinite(train_loss) or train_loss > 100:  # `nan > 100` is False: test finiteness first
        print(f"\nFAIL: loss is {train_loss} at step {step}; the run diverged", flush=True)
        sys.exit(1)
    sync()
    dt = time.time() - t0
    if step >= untimed_steps:
        training_time += dt

    smooth_loss = 0.9 * smooth_loss + 0.1 * train_loss
    debiased = smooth_loss / (1 - 0.9 ** (step + 1))
    tok_per_sec = TOTAL_BATCH_SIZE / dt
    mfu = 100 * flops_per_token * tok_per_sec / peak_flops
    done = min(training_time / TIME_BUDGET, 1.0)
    remaining = max(0.0, TIME_BUDGET - training_time)
    last_step = step >= untimed_steps and training_time >= TIME_BUDGET
    if on_terminal or step < 3 or last_step or time.time() - shown_at >= 5:
        shown_at = time.time()
        line = (f"step {step:05d} ({100 * done:.1f}%) | loss: {debiased:.6f} | dt: {dt * 1000:.0f}ms | "
                f"mfu: {mfu:.1f}% | remaining: {remaining:.0f}s")
        print(f"\r{line}\x1b[K" if on_terminal else line, end="" if on_terminal else "\n", flush=True)

    if step == 0:  # Python's GC pauses cost ~500ms; everything allocated so far lives for the whole run
        gc.collect()
        gc.freeze()
        gc.disable()
    elif step % 5000 == 0:
        gc.collect()
    step += 1
    if last_step:
        break
if on_terminal:
    print()

# ---------------------------------------------------------------------------
# Evaluation and summary

total_tokens = step * TOTAL_BATCH_SIZE
# Under the harness the metric is computed from an exported copy of the model (torch.export), which
# can hold neither flex_attention's block masks nor FA3's kernel: evaluate with SDPA, same windows.
if ATTENTION_BACKEND in ("flex", "fa3"):
    ATTENTION_BACKEND = "sdpa"
    _masks.clear()
    make_attention_masks(MAX_SEQ_LEN, raw_model.windows, device)
model.eval()
t_eval = time.time()
with autocast_ctx:
    val_bpb = evaluate_bpb(model, tokenizer, device_batch_size)
eval_seconds = time.time() - t_eval
if not math.isfinite(val_bpb):
    print(f"FAIL: val_bpb is {val_bpb}", flush=True)
    sys.exit(1)

timed_tokens = (step - untimed_steps) * TOTAL_BATCH_SIZE
tokens_per_second = timed_tokens / training_time
if DEVICE_TYPE == "cuda":
    peak_memory_mb = torch.cuda.max_memory_allocated() / 1024 ** 2
elif DEVICE_TYPE == "mps":
    peak_memory_mb = torch.mps.driver_allocated_memory() / 1024 ** 2
else:  # process peak RSS: kilobytes on Linux, bytes on macOS
    peak_memory_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1024 ** 2 if sys.platform == "darwin" else 1024)

print("---")
print(f"val_bpb:          {val_bpb:.6f}")
print(f"training_seconds: {training_time:.1f}")
print(f"total_seconds:    {time.time() - t_start:.1f}")
print(f"peak_vram_mb:     {peak_memory_mb:.1f}")
print(f"mfu_percent:      {100 * flops_per_token * tokens_per_second / peak_flops:.2f}")
print(f"total_tokens_M:   {total_tokens / 1e6:.1f}")
print(f"num_steps:        {step}")
print(f"num_params_M:     {num_params / 1e6:.1f}")
print(f"depth:            {DEPTH}")
print(f"profile:          {PROFILE}")
print(f"source:           {data_source()}")
print(f"device:           {DEVICE_TYPE}")
print(f"device_name:      {device_name(DEVICE_TYPE)}")
print(f"seed:             {os.environ.get('AUTORESEARCH_SEED', '42')}")
print(f"time_budget:      {TIME_BUDGET:g}")
print(f"tokens_per_second: {tokens_per_second:.0f}")
print(f"startup_seconds:  {t_startup:.1f}")
print(f"eval_seconds:     {eval_seconds:.1f}")
