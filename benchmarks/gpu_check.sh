#!/usr/bin/env bash
# The GPU check: one command, at most about 6 minutes on one GPU, every figure in one JSON file.
#
#   benchmarks/gpu_check.sh [--out FILE] [--wheels DIR] [--cpu-dry-run] [--skip-run]
#
# (a) the training step, fp32 against bf16, at 224 px and batch 128: the full model and a sandwich step, ours and
#     OFA's reference supernet (benchmarks/supernet_step.py), with peak GPU memory;
# (b) the evaluation stage's worker on a synthetic ImageFolder: decode once, then calibrate BN and evaluate subnets;
# (c) a real `deps-orch submit` of a 2-epoch DepS run on a synthetic ImageFolder at 224 px, one GPU worker (NCCL),
#     then its ledger and cost-report.
#
# GPU machines are often offline and come with PyTorch (and torchvision) but little else. (a) and (b) need only
# pydantic, PyYAML and the pure-Python ofa package besides: the script installs whatever of them is missing from
# --wheels DIR, a folder filled beforehand on a machine with the network:
#   pip download --only-binary=:all: --python-version 3.11 --platform manylinux2014_x86_64 -d wheels \
#       pydantic pyyaml ofa==0.1.0.post202307202001
# (c) needs the whole package (Ray is too large to carry that way): it runs where `pip install -e .` succeeds, and
# is skipped, saying so, where it does not (or with --skip-run).
#
# --cpu-dry-run runs every step on the CPU at 32 px on a handful of images: everything but the CUDA kernels.
set -euo pipefail
cd "$(dirname "$0")/.."
out="gpu_check.json" wheels="" dry="" skip_run="" failed=""
while [ $# -gt 0 ]; do
    case "$1" in
        --out) out="$2"; shift 2 ;;
        --wheels) wheels="$2"; shift 2 ;;
        --cpu-dry-run) dry=1; shift ;;
        --skip-run) skip_run=1; shift ;;
        *) echo "gpu_check.sh: unknown option $1 (options: --out FILE, --wheels DIR, --cpu-dry-run, --skip-run)" >&2
           exit 2 ;;
    esac
done
python="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}"
work="$(mktemp -d "${TMPDIR:-/tmp}/gpu-check.XXXXXX")"
trap 'rm -rf "$work"' EXIT
started=$SECONDS
say() { echo "[gpu-check $((SECONDS - started))s] $*"; }

"$python" -c "import torch, torchvision" || { echo "gpu_check.sh: needs PyTorch and torchvision" >&2; exit 2; }
if [ -z "$dry" ]; then
    "$python" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" \
        || { echo "gpu_check.sh: no CUDA device (--cpu-dry-run checks the steps on the CPU)" >&2; exit 2; }
fi
for module in pydantic:pydantic yaml:pyyaml ofa:ofa; do
    if ! "$python" -c "import ${module%%:*}" 2>/dev/null; then
        [ -n "$wheels" ] || { echo "gpu_check.sh: ${module##*:} is missing; pass --wheels DIR" >&2; exit 2; }
        "$python" -m pip install --quiet --no-index --find-links "$wheels" "${module##*:}"
    fi
done

if [ -n "$dry" ]; then
    step_args=(--device cpu --resolution 32 --batch 8 --rounds 1 --steps 1)
    images=(--train 40 --val 20 --size 40) dry_flag=(--dry)
else
    step_args=(--device cuda --resolution 224 --batch 128 --rounds 5 --steps 10)
    images=(--train 2560 --val 1000 --size 256) dry_flag=()
fi

say "(a) the training step: fp32 and bf16, ours and OFA's"
"$python" benchmarks/supernet_step.py "${step_args[@]}" --precision fp32 bf16 --json "$work/step.json"

say "(b) the evaluation worker on a synthetic ImageFolder"
"$python" benchmarks/gpu_check.py images "$work/data" "${images[@]}"
"$python" benchmarks/gpu_check.py evaluation "$work/data" --json "$work/evaluation.json" "${dry_flag[@]}"

run_args=()
if [ -n "$skip_run" ]; then
    say "(c) skipped (--skip-run)"
elif ! "$python" -c "import ray, submitit" 2>/dev/null && ! "$python" -m pip install --quiet -e . ; then
    say "(c) skipped: the package does not install here (Ray is needed)"
else
    say "(c) deps-orch submit: 2 epochs of DepS at $( [ -n "$dry" ] && echo 32 || echo 224 ) px, one worker"
    # One chain: a failed run is said, and (a) and (b) still reach the JSON file.
    if "$python" benchmarks/gpu_check.py spec "$work/data" "$work/runs" --out "$work/run.yaml" "${dry_flag[@]}" \
        && "$python" -m orchestrator.cli submit "$work/run.yaml" \
        && "$python" -m orchestrator.cli cost-report gpu-check-deps --root "$work/runs" --format json > "$work/cost.json"
    then
        run_args=(--run "$work/runs/gpu-check-deps" --cost-report "$work/cost.json")
    else
        say "(c) failed (above); the figures of (a) and (b) are kept"
        failed=1
    fi
fi

"$python" benchmarks/gpu_check.py collect --out "$out" --step "$work/step.json" \
    --evaluation "$work/evaluation.json" "${run_args[@]}"
say "done"
[ -z "$failed" ]
