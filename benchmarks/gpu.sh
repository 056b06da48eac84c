#!/usr/bin/env bash
# bf16 pretraining-step MFU of bert_jax: bert-base and bert-large at sequence lengths 128 and 512.
#
#   benchmarks/gpu.sh          # on a CUDA machine with JAX: under 8 minutes, prints one table
#   benchmarks/gpu.sh --tiny   # the same harness end to end on the CPU, tiny models (a smoke test)
#
# Each case runs in its own process (python -m benchmarks.run_all --mfu): build, compile, one
# warm-up step, then the median of 3 blocks of 10 steps. Extra arguments go to run_all
# (e.g. --steps 20, --remat dots_no_batch). The table is also written to
# benchmarks/results/mfu.md and mfu.json. PYTHON picks the interpreter (default: .venv, else
# python3); it needs a CUDA build of jaxlib, flax, optax, tqdm and ml_collections, and runs from
# the repository root without installing bert_jax (on an image that has JAX and Flax, adding the
# pure-Python ml_collections wheel is enough; the data pipeline's packages are not used here).
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ -n "${PYTHON:-}" ]]; then
  py="$PYTHON"
elif [[ -x .venv/bin/python ]]; then
  py=.venv/bin/python
else
  py=python3
fi

tiny=0
for arg in "$@"; do [[ "$arg" == "--tiny" ]] && tiny=1; done

"$py" - "$tiny" <<'PYEOF' || exit 2
import importlib.util, sys
missing = [m for m in ("jax", "flax", "optax", "ml_collections", "tqdm")
           if importlib.util.find_spec(m) is None]
if missing:
    sys.exit(f"gpu.sh: {sys.executable} lacks {', '.join(missing)}; pip install them "
             "(or set PYTHON to an interpreter that has bert_jax's dependencies)")
if sys.argv[1] == "0":
    import jax
    platforms = {d.platform for d in jax.devices()}
    if "gpu" not in platforms and "cuda" not in platforms:
        sys.exit(f"gpu.sh: JAX sees no GPU (devices: {jax.devices()}); install a CUDA jaxlib "
                 "(pip install 'jax[cuda12]'), or pass --tiny to run the harness on the CPU")
PYEOF

exec timeout 470 "$py" -m benchmarks.run_all --mfu "$@"
