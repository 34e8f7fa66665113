#!/usr/bin/env bash
# The GPU check on the lent GPU machine (JAX there, no Keras, no internet).
#
#   bash bench/gpu/run.sh [gpu_check.py flags]    install what is missing, then run the check (KERAS_BACKEND=jax)
#   bash bench/gpu/run.sh --install-only           install and check the imports, run nothing
#
# The check times the whole seed experiment (five variants, the seed's sizes and epochs) and checks the fast
# path of every variant (XLA-compiled, bf16 in the VGG16 base, float32 augmentation): exit 1 if one fails.
#
# Needs bench/gpu/wheels from bench/gpu/prepare.py (carry it). Keras and the rest go into $GPU_CHECK_SITE
# with pip --target, not a venv: the machine's python3 is itself a venv, and a venv made from it with
# --system-site-packages would see the base interpreter's packages, not the JAX and CUDA libraries in it.
# Overridable: PYTHON (python3), GPU_CHECK_WHEELS (bench/gpu/wheels), GPU_CHECK_SITE (/tmp/gpu-check-site).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

PYTHON=${PYTHON:-python3}
WHEELS=${GPU_CHECK_WHEELS:-bench/gpu/wheels}
SITE=${GPU_CHECK_SITE:-/tmp/gpu-check-site}

"$PYTHON" bench/gpu/install.py --wheels "$WHEELS" --target "$SITE"
export PYTHONPATH="$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}"
export KERAS_BACKEND=jax PYTHONUNBUFFERED=1

# Fail here, in one line, rather than minutes later inside the check.
"$PYTHON" - <<'PY'
import importlib, sys
missing = []
for name in ("numpy", "jax", "h5py", "ml_dtypes", "yaml", "pydantic", "keras", "cvpipe.stages.train", "cvpipe.stages.features",
             "cvpipe.stages.evaluate", "cvpipe.ml.device"):
    try:
        importlib.import_module(name)
    except Exception as error:  # an ImportError or a version clash surfacing at import
        missing.append(f"{name} ({type(error).__name__}: {error})")
if missing:
    sys.exit("run.sh: cannot import " + "; ".join(missing))
import jax, keras
print(f"run.sh: jax {jax.__version__} on {jax.devices()}, keras {keras.__version__} ({keras.backend.backend()})")
from cvpipe.ml.device import detect_device, resolve_precision
print(f"run.sh: train.precision auto -> {resolve_precision('auto', detect_device())}")
PY

if [[ "${1:-}" == "--install-only" ]]; then
    exit 0
fi
exec "$PYTHON" -m bench.gpu_check "$@"
