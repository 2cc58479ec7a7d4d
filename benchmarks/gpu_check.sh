#!/usr/bin/env bash
# The one command for a CUDA machine, from the repository root: install the carried wheels, print versions, run the
# CUDA tests, then the GPU benchmark (tagger vs the official code per family, and `tagger train` end to end).
# Expects .whl/ (wheels: soundfile, soxr, librosa and their missing deps, torchlibrosa, efficientnet_pytorch;
# .whl/ast/ holds timm 0.4.5 for the official AST alone) and .official/ (benchmarks/prepare_official.sh).
# Logs and JSON go to $OUT (default ./gpu_out). Each part runs even when the one before failed.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1

python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  || echo "gpu_check: installing the wheels failed; carrying on with what is importable"
export PYTHONPATH=/tmp/site:$PWD

python3 - <<'PY' 2>&1 | tee "$OUT/versions.log"
import importlib, platform, torch
print("python", platform.python_version(), "| torch", torch.__version__, "| cuda", torch.version.cuda,
      "| device", torch.cuda.get_device_name() if torch.cuda.is_available() else "none")
for name in ("torchaudio", "numpy", "timm", "soundfile", "soxr", "librosa", "torchlibrosa", "efficientnet_pytorch",
             "h5py"):
    try:
        print(f"  {name} {getattr(importlib.import_module(name), '__version__', '?')}")
    except Exception as error:
        print(f"  {name} MISSING ({error})")
PY

status=0
timeout 150 python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py 2>&1 | tee "$OUT/cuda_tests.log" || status=1
timeout 300 python3 benchmarks/bench_gpu.py --official-root .official --out "$OUT/bench_gpu.json" 2>&1 \
  | tee "$OUT/bench_gpu.log" || status=1
echo "gpu_check: done (status $status); logs in $OUT"
exit $status
