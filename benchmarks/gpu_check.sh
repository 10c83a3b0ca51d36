#!/usr/bin/env bash
# The GPU checks of issue 17, as one script for a machine with a CUDA GPU (about 10 minutes):
# the `cuda` tests, then benchmarks/gpu_check.py (100 ZsRE edits and their evaluation on
# SmolLM2-135M-Instruct and Gemma-3-270M in bf16: seconds per edit, tokens/s, peak memory).
# Run from the repository root with a CUDA torch, in an environment set up as .ci/run sets one up
# (pip install -e ".[gguf,serve,test]" and the model packages): collecting the tests imports them all.
set -euo pipefail
cd "$(dirname "$0")/.."
python -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else "gpu_check.sh: no CUDA GPU here")'
timeout 240 python -m pytest -q -m cuda -p no:cacheprovider tests
cd benchmarks
timeout 420 python gpu_check.py --records "${RECORDS:-100}" --out results/gpu_check.json
