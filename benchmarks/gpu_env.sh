# Shared set-up of the GPU benchmark wrappers (benchmarks/gpu_check.sh, benchmarks/gpu_quality.sh).
# Source it from the repository root, then call gpu_env_setup:
#
#   source benchmarks/gpu_env.sh
#   gpu_env_setup NAME [EXTRA_IMPORTS] || exit 1
#
# It sets PY (python3, or $PYTHON), puts the repository on PYTHONPATH, and when unigen's imports
# (plus EXTRA_IMPORTS, a comma-separated module list) fail, installs the wheels carried in .whl/
# (pure Python, --no-deps, into /tmp/unigen-site) and checks again; benchmarks/gpu_wheels.txt has
# the one pip command that fetches them.  Then it checks that torch sees a CUDA device and prints
# the device, torch and lightning versions.  NAME prefixes its messages.
#
# ``run NAME SECONDS ARGS...`` runs benchmarks/NAME.py under a time limit and carries on when it
# fails, adding NAME to ``failed``; with BUDGET_S set it first skips a stage whose limit would
# overrun the seconds the script has left (the device session's time is what runs out first).
PY=${PYTHON:-python3}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
GPU_ENV_IMPORTS="torch, lightning, einops, safetensors, tokenizers, diffusers, vector_quantize_pytorch"

gpu_env_setup() {
  local name=$1 imports="import $GPU_ENV_IMPORTS${2:+, $2}"
  if ! $PY -c "$imports" 2>/dev/null; then
    if compgen -G ".whl/*.whl" >/dev/null; then
      echo "$name: installing carried wheels from .whl/"
      $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/unigen-site .whl/*.whl || return 1
      export PYTHONPATH="$PYTHONPATH:/tmp/unigen-site"
    fi
    $PY -c "$imports" || { echo "$name: missing packages; fetch wheels as benchmarks/gpu_wheels.txt says"; return 1; }
  fi
  $PY -c "import torch, lightning; assert torch.cuda.is_available(), 'no CUDA device visible';
print('$name:', torch.cuda.get_device_name(), 'torch', torch.__version__, 'lightning', lightning.__version__)" || return 1
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
}

failed=()
run() {  # run NAME SECONDS ARGS...: one benchmark under a time limit; keep going if it fails
  local name=$1 limit=$2; shift 2
  if [ -n "${BUDGET_S:-}" ] && [ $((SECONDS + limit)) -gt "$BUDGET_S" ]; then
    echo "=== $name skipped: its ${limit} s limit would overrun BUDGET_S=$BUDGET_S (at ${SECONDS} s)"
    return 0
  fi
  echo "=== $name ($*)"
  timeout "$limit" "$PY" "benchmarks/$name.py" "$@" || { echo "$name failed or timed out"; failed+=("$name"); }
}
