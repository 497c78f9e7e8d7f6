#!/usr/bin/env bash
# The GPU checks of issues 3, 4 and 5 in one prepared run, for a session that is lent a GPU machine
# (the workplace's `device` tool). It has NOT been run on a GPU yet (no session so far had one).
#
# The GPU image has torch, transformers, accelerate, timm, torchmetrics but not diffusers: carry it as
# wheels. Once, here, in the repo root:
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d .whl \
#     diffusers==0.42.1 importlib_metadata zipp tifffile
# (check `unzip -p .whl/NAME-*.whl '*/METADATA' | grep ^Requires-Dist` for anything else missing there.)
# Then one device call, with carry [".whl"] and a timeout that leaves room for a rerun, e.g. 480 s:
#   python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
#     .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD/src || exit; bash benchmarks/gpu_session.sh
# Results land in $OUT (or ./gpu_results): one log and one JSON per benchmark.
set -u
out=${OUT:-gpu_results}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$out/gpu.txt"
run() {  # run NAME SECONDS CMD...: a time limit per benchmark, so one hang does not eat the budget
  local name=$1 limit=$2; shift 2
  echo "== $name"; timeout "$limit" "$@" 2>&1 | tee "$out/$name.log"
}
# Issue 4: seconds per step of a 2048x2048 image, SD-1.5-sized UNet, bf16, guidance 7.5 (49 patches x 2),
# beside the raw batched UNet time measured in the same run; peak memory at 2048 and 8192 px.
run upscale 200 python benchmarks/bench_upscale.py --size sd15 --device cuda --dtype bf16 --steps 5 \
  --repeats 2 --skip-one-at-a-time --compile --memory --json "$out/upscale.json"
# Issue 3: training steps of an SD-1.5-sized UNet at batch 4 and 16, bf16, with and without FEL.
run train 150 python benchmarks/bench_train.py --device cuda --size sd15 --batch-sizes 4 16 --steps 10   # add --compile on a rerun if time allows
# Issue 4: float32 batch-size invariance on the GPU and the memory test.
run gpu_tests 90 python -m pytest -q -p no:cacheprovider -m gpu tests/test_sample_gpu.py
# Issue 5: the metric functions on 10,000 x 2048 features (full image extraction needs Inception weights).
run metrics 60 python benchmarks/bench_metrics.py --device cpu --threads 16
