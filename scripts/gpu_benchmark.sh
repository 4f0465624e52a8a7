#!/usr/bin/env bash
# The GPU benchmarks, for a lent GPU machine (the device tool's `run`), from the repository root:
#
#   run(command="bash scripts/gpu_benchmark.sh", carry=[".whl"], timeout_s=600)
#
# That machine has torch, transformers, matplotlib and onnxruntime but not open_clip_torch: its wheels
# travel in .whl/ (prepare them here, see docs/runtime.md). The script installs them, records the machine,
# runs the benchmark (then the CUDA tests and a torch.compile run, each time-boxed so the main results come
# back whatever happens later) and leaves everything in $OUT: bench_cuda.{json,png,md}, bench_compile.md,
# tests_cuda.txt, env.txt, log.txt.
#
# Dry run on a CPU machine (BENCH_ARGS is appended to both benchmark commands; the last flag wins):
#   DEVICE=cpu MODEL=synseg-tiny OUT=/tmp/out PYTHON=.venv/bin/python \
#   BENCH_ARGS="--sizes 64 --categories 1,2 --compare naive --iters 1 --warmup 0" bash scripts/gpu_benchmark.sh
set -uo pipefail

OUT=${OUT:-gpu_out}
PYTHON=${PYTHON:-python3}
DEVICE=${DEVICE:-cuda}
MODEL=${MODEL:-synseg-vit-b-16}
read -r -a EXTRA <<< "${BENCH_ARGS:-}"
mkdir -p "$OUT"
exec > >(tee "$OUT/log.txt") 2>&1
export PYTHONUNBUFFERED=1 SYNSEG_ENGINE_CACHE=/tmp/synseg-engines

if ! "$PYTHON" -c "import open_clip" 2>/dev/null; then
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        || { echo "cannot install the carried wheels in .whl/"; exit 1; }
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD"

{
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>/dev/null || echo "no nvidia-smi"
    "$PYTHON" -c "import torch, transformers, open_clip; print('torch', torch.__version__, 'cuda', torch.version.cuda, \
'transformers', transformers.__version__, 'open_clip', open_clip.__version__, 'cpus', torch.get_num_threads())"
    "$PYTHON" -c "from synseg_model.backends import tensorrt_status; print(tensorrt_status()[1])"
} | tee "$OUT/env.txt"

# Main table: auto (tensorrt where installed, else torch fp16 + CUDA graphs), torch fp32 and bf16,
# against CLIPSeg in fp32 and fp16 and the naive wrapper.
timeout 330 "$PYTHON" -m synseg_model.benchmark --device "$DEVICE" --model "$MODEL" \
    --backends auto,torch:fp32,torch:bf16 --categories 1,5,10,20 --sizes 224,352 \
    --compare clipseg,naive --clipseg-precision fp32,fp16 --warmup 10 --iters 50 \
    --json "$OUT/bench_cuda.json" --plot "$OUT/bench_cuda.png" --markdown "$OUT/bench_cuda.md" ${EXTRA[@]+"${EXTRA[@]}"} \
    || echo "benchmark exited with $?"

# Equivalence of the CUDA backends with eager fp32 (CUDA graphs, autocast) and the TensorRT compile test.
timeout 100 "$PYTHON" -m pytest -q -s -p no:cacheprovider tests/test_backends.py -k "cuda or tensorrt" \
    2>&1 | tee "$OUT/tests_cuda.txt" || true

# torch.compile on top of the CUDA graphs (slow to build: one compile per K slot), 352 px and K=10 only.
timeout 150 "$PYTHON" -m synseg_model.benchmark --device "$DEVICE" --model "$MODEL" \
    --backends torch:fp16:compile --categories 10 --sizes 352 --compare none --warmup 10 --iters 50 \
    --markdown "$OUT/bench_compile.md" ${EXTRA[@]+"${EXTRA[@]}"} || echo "compile benchmark exited with $? (timeout: 124)"
echo "done"
