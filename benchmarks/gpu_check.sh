#!/bin/bash
# Check the package on a GPU machine in one command (docs/gpu.md): the fast tier with CUDA visible, the GPU tier,
# the CUDA benchmarks and the Penn-Fudan UNet config with the CUDA defaults. Run in the project's root:
#   bash benchmarks/gpu_check.sh            (CHECK_STEPS="tests gpu bench pennfudan" by default)
# On the lent GPU machine (../shared/gpu/README.md): run ../shared/gpu/prepare.sh here first (wheels into .whl/,
# Penn-Fudan into .gpu/ where it fits), then the device tool's run with `bash benchmarks/gpu_check.sh` and carry
# [".whl", ".gpu"]. Where the stack is installed (the project's venv), the wheels step is skipped.
# A line per step goes to $OUT/steps.txt (default ./gpu-out); the logs and JSON files beside it.
set +e
OUT=${OUT:-$PWD/gpu-out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 NO_ALBUMENTATIONS_UPDATE=1 MPLBACKEND=Agg
steps=${CHECK_STEPS:-tests gpu bench pennfudan}; t0=$(date +%s)
PY=${PY:-python3}
stamp() { echo "[$(( $(date +%s) - t0 )) s] $*" | tee -a "$OUT/steps.txt"; }
if ! $PY -c "import segmentation_models_pytorch, albumentations, pycocotools" 2>/dev/null; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    > /tmp/pip.log 2>&1 && export PYTHONPATH=/tmp/site || { stamp "wheels did not install: $(tail -2 /tmp/pip.log)"; exit 1; }
fi
stamp "$($PY -c 'import torch, torchvision; print("torch", torch.__version__, "torchvision", torchvision.__version__, "cuda", torch.cuda.is_available(), torch.cuda.get_device_name() if torch.cuda.is_available() else "")')"
# (import-linter and chromium are not on such images: their tests are left out)
ignore="--ignore=tests/test_layers.py --ignore=tests/test_browser.py"
if [[ $steps == *tests* ]]; then
  timeout 300 $PY -m pytest -q -m "not slow and not cuda" -p no:cacheprovider $ignore > "$OUT/fast_tier.log" 2>&1
  stamp "fast tier with CUDA visible: $(grep -E '[0-9]+ (passed|failed)' "$OUT/fast_tier.log" | tail -1)"
fi
if [[ $steps == *gpu* ]]; then
  timeout 420 $PY -m pytest -q -m cuda -p no:cacheprovider $ignore > "$OUT/gpu_tier.log" 2>&1
  stamp "GPU tier: $(grep -E '[0-9]+ (passed|failed)' "$OUT/gpu_tier.log" | tail -1)"
fi
if [[ $steps == *bench* ]]; then
  timeout 300 $PY benchmarks/run.py --only cuda_throughput predict_throughput semantic_loader --json "$OUT/bench.json" > "$OUT/bench.log" 2>&1
  stamp "benchmarks rc=$?: $(grep -E '^(cuda_throughput|predict_throughput|semantic_loader) ' "$OUT/bench.log" | tr -s ' ' | cut -c1-400 | tr '\n' '|')"
fi
if [[ $steps == *pennfudan* ]]; then
  D=${D:-.gpu/PennFudanPed}; [ -d "$D" ] || D=../shared/data/PennFudanPed
  if [ -d "$D" ]; then
    timeout 300 $PY tools/train_semantic.py --config configs/semantic/pennfudan_unet.yaml --data-root "$D" --output-dir /tmp/gpu_check/unet > "$OUT/pennfudan_unet.log" 2>&1
    cp /tmp/gpu_check/unet/metrics.json "$OUT/pennfudan_unet_metrics.json" 2>/dev/null
    stamp "Penn-Fudan UNet (CUDA defaults): $(grep -E 'training took|test:' "$OUT/pennfudan_unet.log" | tail -2 | tr '\n' ' ' | cut -c1-250)"
  else
    timeout 120 $PY tools/train_semantic.py --output-dir /tmp/gpu_check/default > "$OUT/default.log" 2>&1
    stamp "default run (synthetic): $(grep -E 'training took|test:' "$OUT/default.log" | tail -2 | tr '\n' ' ' | cut -c1-250)"
  fi
fi
