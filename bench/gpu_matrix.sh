#!/usr/bin/env bash
# bench/matrix.py on the lent 16-core GPU host, from a folder carried there that holds this checkout's src/, bench/,
# notebooks/, workflows/, tests/conftest.py, pyproject.toml and site.tar.xz (slim Ray plus the packages the host
# lacks, unpacked: bench/README.md says how it is made). CPU only: the GPU is hidden, so the runs are CPU-target
# compiles scored and shipped on ONNX Runtime (the host has no OpenVINO or NNCF).
#   usage: OUT=dir STUDY="--study-workers 8 --search-steps 1" MATRIX="--workers serial,8:0,8,4" bash bench/gpu_matrix.sh
# (measured 2026-12-01: serial, 8:0, 8 and 4 take about 470 s there, 2 and 1 about 400 s: two calls of 600 s)
# The study runs first (it also warms the page cache for the serial runs), each part under its own time limit.
set -o pipefail
export PYTHONUNBUFFERED=1
cd "$(dirname "$0")/.."
for d in models calib_data data; do [ -e $d ] || ln -s ../../$d $d; done  # reference data: the checkout's, two up
[ -d /tmp/site ] || tar -xJf site.tar.xz -C /tmp || exit 3
export PYTHONPATH=/tmp/site JUPYTER_PATH=/tmp/site/share/jupyter YOLO_OFFLINE=1 CUDA_VISIBLE_DEVICES=
python3 -m compileall -q -j 0 /tmp/site src >/dev/null 2>&1  # bytecode now, not inside the first timed run
out=${OUT:-/tmp/out}; mkdir -p "$out"
{ date -u; nproc; lscpu | grep -E 'Model name|^CPU\(s\)|Thread|Socket'; free -g | head -2
  python3 -c 'import ray, sys; print(sys.version.split()[0], "ray", ray.__version__, ray.__file__)'
  python3 -c 'import openvino' 2>&1 | tail -1; python3 -c 'import nncf' 2>&1 | tail -1; } 2>&1 | tee "$out/env.txt"
quiet() { grep --line-buffered -v -e '^\s*$' -e 'it/s\]' -e 's/it\]' -e '^\[[IWV]\]' -e '^    '; }
if [ -n "${STUDY-}" ]; then
  timeout "${T_STUDY:-120}" python3 bench/matrix.py --study-only $STUDY 2>&1 | tee "$out/study.txt" | quiet
fi
if [ -n "${MATRIX-}" ]; then
  timeout "${T_MATRIX:-300}" python3 bench/matrix.py --no-study $MATRIX 2>&1 | tee "$out/matrix.txt" | quiet
fi
