#!/usr/bin/env bash
# The GPU checks of the performance issue in one run, on a CUDA machine whose Python already has
# torch, transformers, tiktoken, typer, rich, safetensors, numba and pytest (no install, no network):
#   bash benchmarks/gpu_check.sh [OUT_DIR]
# The CUDA tests (every command on the GPU against the CPU, the graph decode, -N and every dtype),
# then `bench` and bench_vs_transformers.py on random GPT-2 124M and 1.5B weights.
# Logs go to OUT_DIR (default /tmp/gpu-check). Under 10 minutes on an H200.
set -u
out=${1:-/tmp/gpu-check}
mkdir -p "$out"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 CHATGPT_CLI_NO_LOG=1
nvidia-smi -L
python3 -c "import torch, transformers, numba; print('torch', torch.__version__, 'transformers', \
transformers.__version__, 'numba', numba.__version__, torch.cuda.get_device_name())"
nproc
timeout 200 python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py 2>&1 | tee "$out/tests.log"
timeout 150 python3 -m pytest -q -p no:cacheprovider -k "cuda or graph or device" \
    tests/test_model.py tests/test_weights.py tests/test_precision.py 2>&1 | tee -a "$out/tests.log"
timeout 120 python3 benchmarks/bench_vs_transformers.py --device cuda --size gpt2 --runs 3 2>&1 \
    | tee "$out/vs-transformers-gpt2.log"
timeout 210 python3 benchmarks/bench_vs_transformers.py --device cuda --size gpt2-xl --runs 3 --tokens 32 2>&1 \
    | tee "$out/vs-transformers-gpt2-xl.log"
timeout 45 python3 -m chatgpt_cli bench --random gpt2 --device cuda 2>&1 | tee "$out/bench-gpt2.log"
timeout 60 python3 -m chatgpt_cli bench --random gpt2-xl --device cuda 2>&1 | tee "$out/bench-gpt2-xl.log"
for dtype in int8 int4; do
    timeout 45 python3 -m chatgpt_cli bench --random gpt2 --device cuda --dtype $dtype 2>&1 | tee -a "$out/bench-gpt2.log"
done
