#!/usr/bin/env bash
# Every GPU benchmark of issue #9 in one device call, in order of importance, each under its
# own time limit so one slow step cannot take the others' results with it (about 9 minutes in
# all; the device tool allows 10 per call and 15 per session, the machine's start included).
#
# Before the call, on the CPU machine (the GPU image has no ml-collections or diffusers and
# reaches no package registry; about 39 MB, ignored by git):
#   python3 -m pip download diffusers ml-collections --python-version 3.12 \
#       --only-binary=:all: --platform manylinux2014_x86_64 -d .whl
# and, for the official DiT beside SiT-XL/2 (step 5; timm is the DiT code's one dependency):
#   python3 -m pip download timm --no-deps --python-version 3.12 --only-binary=:all: -d .whl
#   mkdir -p .dit && git -C DIT_CHECKOUT show HEAD:models.py > .dit/models.py  # not committed
# Then: device run, command "bash benchmarks/gpu_session.sh", carry [".whl", ".dit"], timeout_s 600.
# Each table lands in $OUT/<step>.txt; copy them into BENCHMARKS.md as a dated entry.
set -uo pipefail
OUT=${OUT:-/tmp/gpu_session}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if [ -d .whl ]; then
    python3 -m pip install -q --no-index --find-links .whl diffusers ml-collections
    python3 -m pip install -q --no-index --no-deps --find-links .whl timm 2>/dev/null
fi
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/device.txt"
python3 -c "import jax, flax; print('jax', jax.__version__, 'flax', flax.__version__)" | tee -a "$OUT/device.txt"
python3 -c "import torch, diffusers; print('torch', torch.__version__, 'diffusers', diffusers.__version__)" \
    2>&1 | tail -1 | tee -a "$OUT/device.txt"

step() {  # step NAME SECONDS SCRIPT ARGS...: one benchmark, its output kept even on timeout
    local name=$1 limit=$2
    shift 2
    echo "== $name (limit ${limit} s): python3 $*"
    timeout "$limit" python3 "$@" 2>&1 | tee "$OUT/$name.txt"
    echo "== $name exit ${PIPESTATUS[0]}"
}
# 1. the 3x target: DDPM U-Net, bf16, 1 and 4 steps per call, beside diffusers (4 modes)
step train_ddpm 210 benchmarks/train_throughput.py --networks ddpm --dtypes bfloat16 \
    --steps_per_call 1,4
# 2. one evaluation at batch 1024, DDIM 50, DPM-Solver++(2M) 20, Heun 35, beside diffusers
step samplers 120 benchmarks/sampler_throughput.py --samplers ddim,dpm_solver_pp_2m,heun
# 3. where the training step's time goes (profile before tuning)
step breakdown 90 benchmarks/train_breakdown.py --networks ddpm
# 4. the two DDPM++ networks: images/s and MFU
step train_ddpmpp 60 benchmarks/train_throughput.py --networks score_sde_ddpmpp,edm_ddpmpp \
    --dtypes bfloat16
# 5. SiT-XL/2 (the DiT-XL/2 backbone) at 32x32x4 latents beside the official DiT in PyTorch
step train_sit 100 benchmarks/train_throughput.py --networks sit_xl2 --dtypes bfloat16 \
    --batch 64 --dit_repo .dit
