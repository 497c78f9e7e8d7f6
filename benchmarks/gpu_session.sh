#!/usr/bin/env bash
# One prepared GPU run for a session that is lent a GPU machine (the workplace's `device` tool; 15 minutes of
# device time in all, so every part has its own time limit and the parts run side by side on the one GPU).
#
# Parts (PARTS, default "prepare tiny tiny8k small speed compose gputests"):
#   prepare   the 1,200 Kather development tiles, held-out slide (benchmarks/prepare_dev.py)
#   tiny      issue 21: the tiny model, pathup train's recipe with a longer budget (autoencoder VAE_STEPS, the
#             diffusion stage TIME_LIMIT minutes, validation on 16 images per class), then bench_classes' measures
#   tiny8k    the same with twice the autoencoder steps
#   small     issue 21: the small size with the same recipe (16-channel latent, whole 128 px tiles), bf16
#   speed     issue 19: benchmarks/bench_speed.py at 2048 px on the CPU-trained k1200 tiny model (carried)
#   compose   issue 21: one 2048 px composed image (random 4-class layout) from the tiny model of `tiny`
#   gputests  pytest -m gpu
#   legacy    the never-run GPU checks of issues 3-5 (bench_upscale / bench_train at sd15 size)
#
# What travels (carry [".whl", ".gpu"]), made here once (both folders are in .git/info/exclude):
#   .whl  the Python wheels the GPU image lacks or has at other versions: diffusers 0.42.1, transformers 5.25.0,
#         tokenizers, huggingface_hub, httpx2, httpcore2, truststore, accelerate, safetensors, importlib_metadata,
#         lazy-importer (python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 ...)
#   .gpu/kather2016-dev   the 1,200 development tiles (../shared/data/kather2016-dev)
#   .gpu/k1200cpu/{model,encoder}   the tiny model and domain encoder trained on the CPU (bench_classes, k1200)
# The device command:
#   python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
#     .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD/src || exit; bash benchmarks/gpu_session.sh
#   (then `PACK_ONLY=1 bash benchmarks/gpu_session.sh` packs what a run stopped by an outer timeout left)
# A dry run on the CPU with tiny budgets: DRY=1 OUT=/tmp/gpu_dry bash benchmarks/gpu_session.sh
set -u
out=${OUT:-gpu_results}
work=${WORK:-/tmp/gpu_work}
mkdir -p "$out" "$work"
export PYTHONUNBUFFERED=1 PYTHONPATH=${PYTHONPATH:-$PWD/src}
py=${PY:-python3}
parts=${PARTS:-prepare tiny tiny8k small speed compose gputests}
has() { [[ " $parts " == *" $1 "* ]]; }
dryargs=()
if [[ -n "${DRY:-}" ]]; then  # the same commands with CPU-sized budgets
  dev=cpu; vae=20; svae=10; tlimit=0.3; stlimit=0.3; per=2; venc=1; every=20; size=256; threads=1
  dryargs=(--train-arg vae_eval_tiles=16)
  speedargs="--size 256 --latent-patch 16 --latent-overlap 8 --classes 1 --seeds 1 --schedulers ddim unipc --sweep-steps 10"
else
  dev=cuda; vae=${VAE_STEPS:-4000}; svae=${SMALL_VAE_STEPS:-2000}; tlimit=${TIME_LIMIT:-3}
  stlimit=${SMALL_TIME_LIMIT:-4}; per=16; venc=0; every=500; size=2048; threads=3
  speedargs=${SPEED_ARGS:-"--size 2048 --latent-patch 16 --latent-overlap 8 --classes 3 --seeds 1 --schedulers ddim unipc dpm++-karras euler --sweep-steps 10 20 30"}
fi
export OMP_NUM_THREADS=$threads
(nvidia-smi --query-gpu=name,memory.total --format=csv; $py -c "import torch, sys; print(sys.version.split()[0], \
torch.__version__, torch.cuda.is_available())") > "$out/env.txt" 2>&1
pack() {  # what comes back (also alone: PACK_ONLY=1, after a run stopped by an outer time limit)
  # the tiny model and its encoder (about 15 MB), the composed image when under the 16 MB a file may have
  [[ -d "$work/tiny/run/model" ]] && tar -cf "$out/tiny_model.tar" -C "$work/tiny/run" model encoder
  for f in "$work"/compose/*_s0.png; do [[ -f $f && $(stat -c %s "$f") -lt 16000000 ]] && cp "$f" "$out/"; done
  # what comes back: one archive of the small files (reports, curves, logs, sample grids, previews)
  (cd "$work" && find . \( -name "*.md" -o -name "*.json" -o -name "*.jsonl" -o -name "*.log" -o -name "*.png" \
     -o -name "*.jpg" -o -name "*.yaml" -o -name "*.geojson" \) -size -6M -not -path "*/tiles/*" \
     -not -path "*/generated/*" -not -path "*/checkpoints/*" -not -path "*/tensorboard/*" -print0 \
     | tar --null -czf "$out/results.tar.gz" -T -)
  ls -la "$out"
}
[[ -n "${PACK_ONLY:-}" ]] && { pack; exit 0; }
run() {  # run NAME SECONDS CMD...: a time limit per part, so one hang does not eat the budget
  local name=$1 limit=$2; shift 2
  echo "== $name start $(date +%T)"
  timeout "$limit" "$@" > "$work/$name.log" 2>&1; local rc=$?
  echo "== $name rc=$rc end $(date +%T)"; tail -3 "$work/$name.log"
}
data=$work/k1200
if has prepare; then
  run prepare 120 $py benchmarks/prepare_dev.py --root .gpu/kather2016-dev --out "$data" --workers 8
fi
encarg=()
[[ -n "$venc" && "$venc" != 0 ]] && encarg=(--train-arg "val_encoder_epochs=$venc")
common=(--dataset "$data" --guidance 1 3 --per-class "$per" --features auto color-stats
        --train-arg val_per_class="$per" --train-arg val_every="$every" --train-arg max_epochs=1000
        --train-arg patience=1000 --train-arg progress=false "${encarg[@]}" "${dryargs[@]}")
compose() {  # one 2048 px image composed from a random 4-class layout, from the tiny model of `tiny`
  [[ -f "$work/tiny/run/model/model_index.json" ]] || return
  run compose 90 $py -m pathup compose --model "$work/tiny/run/model" --random-layout 4 --size "$size" \
    --strength 1 --latent-patch 16 --latent-overlap 8 --steps 30 --guidance 3 --device "$dev" \
    --out "$work/compose"
  $py - "$work/compose" <<'EOF'
import sys
from pathlib import Path
from PIL import Image
Image.MAX_IMAGE_PIXELS = None
for p in Path(sys.argv[1]).glob("*_s0.png"):
    im = Image.open(p).convert("RGB")
    im.save(p.with_suffix(".q90.jpg"), quality=90)
    im.crop((0, 0, min(768, im.width), min(768, im.height))).save(p.with_suffix(".crop.png"))
EOF
}
if has tiny; then
  (run tiny "${TINY_S:-400}" $py benchmarks/bench_classes.py --out "$work/tiny" --size tiny "${common[@]}" \
    --train-arg vae_steps="$vae" --train-arg time_limit="$tlimit"; has compose && compose) &
fi
if has tiny8k; then  # the same with twice the autoencoder steps: does PSNR keep rising?
  run tiny8k "${OTHER_S:-460}" $py benchmarks/bench_classes.py --out "$work/tiny8k" --size tiny "${common[@]}" \
    --train-arg vae_steps="$((2 * vae))" --train-arg time_limit="$tlimit" &
fi
if has small; then
  run small "${OTHER_S:-460}" $py benchmarks/bench_classes.py --out "$work/small" --size small "${common[@]}" \
    --vae-arg latent_channels=16 --unet-arg in_channels=16 --unet-arg out_channels=16 \
    --train-arg resolution=128 $([[ $dev == cuda ]] && echo --train-arg mixed_precision=bf16) \
    --train-arg vae_steps="$svae" --train-arg time_limit="$stlimit" &
fi
if has speed && [[ -f benchmarks/bench_speed.py ]]; then
  run speed "${OTHER_S:-460}" $py benchmarks/bench_speed.py --model .gpu/k1200cpu/model \
    --encoder .gpu/k1200cpu/encoder --dataset "$data" --device "$dev" --out "$work/speed" $speedargs &
fi
if has gputests && [[ $dev == cuda ]]; then
  run gputests 150 $py -m pytest -q -p no:cacheprovider -m gpu tests/test_sample_gpu.py &
fi
wait
if has legacy && [[ $dev == cuda ]]; then
  run upscale 200 $py benchmarks/bench_upscale.py --size sd15 --device cuda --dtype bf16 --steps 5 \
    --repeats 2 --skip-one-at-a-time --compile --memory --json "$work/upscale.json"
  run train 150 $py benchmarks/bench_train.py --device cuda --size sd15 --batch-sizes 4 16 --steps 10
fi
pack
