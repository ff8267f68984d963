#!/usr/bin/env bash
# The GPU checks of issue 5, in one device call (about 10 minutes): run with the .gpu kit carried.
#
#   1. the CUDA, TensorRT and GPU-preprocessing tests (they skip on CPU-only machines and in CI);
#   2. `triage bench inference` at the paper's widths (the target: best runtime >= 3x eager fp32 at
#      batch 256 for Deep-CT-Net 256, a 300-slice study < 50 ms) and with the committed weights;
#   3. `python -m engine.preprocess_torch --device cuda` (GPU vs NumPy preprocessing, speed and error).
# Logs go to $OUT (the device tool brings them back), or to ./gpu-check-out elsewhere.
set -uo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$repo"
out="${OUT:-$repo/gpu-check-out}"
py="${PYTHON:-python3}"  # the device image's python3 holds PyTorch
mkdir -p "$out"
[ -d .gpu/wheels ] || { echo "check: no .gpu kit: run 'bash ops/gpu/pack.sh' here and carry .gpu" >&2; exit 2; }
"$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
  .gpu/wheels/*.whl || exit 2
export PYTHONPATH="/tmp/site:$repo" PYTHONUNBUFFERED=1 TRIAGE_SHARED_DATA="$repo/.gpu/data"
{ nvidia-smi; "$py" -c "import torch, onnxruntime; print('torch', torch.__version__, 'cuda', torch.version.cuda,
  torch.cuda.get_device_name(0)); print('onnxruntime', onnxruntime.__version__)";
  "$py" -c "import tensorrt; print('tensorrt', tensorrt.__version__)" || echo "tensorrt: not installed"; } \
  2>&1 | tee "$out/device.txt"
status=0
timeout 240 "$py" -m pytest -q -p no:cacheprovider -ra tests/engine/test_runtime_cuda.py \
  tests/engine/test_runtime_tensorrt.py tests/engine/test_preprocess_torch.py tests/engine/test_runtime_onnx.py \
  2>&1 | tee "$out/pytest.txt" || status=1
timeout 150 "$py" -m ops.cli bench inference --paper-width --models deep-ct-net --seconds 3 --rounds 3 \
  2>&1 | tee "$out/bench-paper-width.txt" || status=1
timeout 150 "$py" -m ops.cli bench inference --seconds 1.5 --rounds 3 2>&1 | tee "$out/bench-committed.txt" \
  || status=1
timeout 60 "$py" -m engine.preprocess_torch --device cuda 2>&1 | tee "$out/preprocess-torch.txt" || status=1
exit $status
