#!/usr/bin/env bash
# The GPU check: on any CUDA machine, from the repository root, in the project's environment.
# Under 8 minutes on one modern GPU; prints images/s, peak memory and the GPU's name.
set -euo pipefail
cd "$(dirname "$0")/../.."
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python -m pytest -m gpu tests/gpu -n 0 -s -p no:cacheprovider "$@"
