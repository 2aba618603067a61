#!/usr/bin/env bash
# Fetch, here, the wheels that benchmarks/gpu_check.sh installs on the lent GPU machine (Python
# 3.12, x86-64, no network there): rnnkit's runtime needs that its image lacks, at the versions
# constraints.txt pins. They land in .whl/ (git-ignored); name it in the device tool's carry.
set -euo pipefail
cd "$(dirname "$0")/.."
pins=$(grep -E '^(starlette|uvicorn|pydivsufsort)==' constraints.txt)
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  --platform any -d .whl $pins
ls .whl
