#!/bin/bash
# The device check on one GPU: our train step and sampler next to the authors' code, one JSON line per
# figure and a table at the end, within 8 minutes of wall time (launch/device_check.py says what it times).
#
#   bash launch/recipes/device_check.sh               # on the GPU machine, from the repository root
#   bash launch/recipes/device_check.sh --smoke       # tiny shapes on any machine, in a minute
#   bash launch/recipes/device_check.sh --batch=64    # a 141 GB chip (H200): start the batch search higher
#
# The GPU machine has jax (CUDA), flax, optax, orbax, torch and lightning but no internet. Prepare, on a
# machine that has internet, in the repository root (these folders travel with the working tree; git
# ignores nothing here, so keep them out of commits):
#
# 1. wheels/ (about 27 MB), what our package and the authors' code import beyond what is there, for
#    Python 3.12 on manylinux x86_64 (--no-deps: the machine's own jax, numpy, protobuf, torch stay):
#      pip download --only-binary=:all: --python-version 3.12 --platform manylinux2014_x86_64 --no-deps \
#          -d wheels/ grain tensorflow-datasets array-record ml-collections tensorboardX etils dm-tree \
#          simple-parsing tensorflow-metadata toml absl-py \
#          hydra-core==1.3.2 omegaconf==2.3.0 transformers==4.54.1 tokenizers==0.21.4 \
#          huggingface-hub==0.34.4 safetensors einops regex
#      pip download --no-binary=:all: --no-deps -d wheels/ antlr4-python3-runtime==4.9.3  # hydra's pin:
#                                                                    # a pure-Python source archive only
# 2. ref/proseco, the authors' code at the commit the harness pins, and ref/bench-ref, the harness that
#    builds it (bench_ref.py with its flash-attn stand-in and import stubs):
#      mkdir -p ref/proseco && git -C PROSECO_CLONE archive 69fe45d101d8367b0d1807466b409f71449a7c58 \
#          | tar -x -C ref/proseco
#      cp -r BENCH_REF_FOLDER ref/bench-ref
#    Without them the reference part prints one "skipped" line and the rest runs.
#
# Environment: WHEELS (default wheels), REF_DIR (default ref/proseco), BENCH_REF (default ref/bench-ref),
# BUDGET_SEC (default 400: the parts' share of the 8 minutes; starting Python and jax takes the rest).
set -uo pipefail

WHEELS="${WHEELS:-wheels}"
REF_DIR="${REF_DIR:-ref/proseco}"
BENCH_REF="${BENCH_REF:-ref/bench-ref}"
BUDGET_SEC="${BUDGET_SEC:-400}"

if compgen -G "${WHEELS}/*" > /dev/null; then
  # Offline, and without dependencies: each archive was chosen to fill one gap of the machine.
  pip install --quiet --no-index --no-deps "${WHEELS}"/* || echo "pip install from ${WHEELS} failed" >&2
fi
export PYTHONPATH="${PWD}${PYTHONPATH:+:${PYTHONPATH}}"
# JAX takes 75% of the GPU's memory by default: the batch search should see nearly all of it. The
# reference runs first, in its own process, and has exited before JAX starts.
export XLA_PYTHON_CLIENT_MEM_FRACTION="${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.95}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true
# The last resort if a part overruns its estimate: stop at 470 s; the lines written so far make the table.
timeout -k 10 470 python launch/device_check.py --budget_sec="${BUDGET_SEC}" --ref_dir="${REF_DIR}" \
  --bench_ref="${BENCH_REF}" --out=device_check.jsonl "$@"
status=$?
if [ "${status}" -eq 124 ] || [ "${status}" -eq 137 ]; then
  echo "stopped after 470 s; the table of what was measured:"
  python launch/device_check.py --table_from=device_check.jsonl
fi
exit "${status}"
