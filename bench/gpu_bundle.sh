#!/usr/bin/env bash
# Make DIR (default .gpuwork/ray of the checkout the device tool sends) for bench/gpu_matrix.sh: this checkout's
# src/, bench/, notebooks/, workflows/, tests/conftest.py, pyproject.toml and site.tar.xz, one archive of what the
# lent host lacks: slim Ray (bench/slim_ray.py), the wheels of ../shared/offline-gpu/fetch-wheels.sh unpacked (less
# debugpy and jedi, which ipykernel and IPython only use when present), and nbconvert with its pure-Python needs and
# templates from this venv (the report renders notebooks with it).  Measured 2026-12-01: 26.6 MB, with the 34.1 MB
# checkout 61.3 MB of the 64 MiB a call carries.
#   usage: bench/gpu_bundle.sh RAY_CP312.whl WHEEL_DIR [DIR]
set -euo pipefail
ray_whl=$1 wheels=$2 here=$(cd "$(dirname "$0")/.." && pwd)
dest=${3:-$(git -C "$here" rev-parse --path-format=absolute --git-common-dir)/../.gpuwork/ray}
py=${PYTHON:-python3}
sp=$($py -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
stage=$(mktemp -d); trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage/site/share/jupyter"
for w in "$wheels"/*.whl; do
  case $(basename "$w") in debugpy-*|jedi-*|ray-*) continue;; esac
  unzip -q -o "$w" -d "$stage/site"
done
for p in nbconvert mistune bleach tinycss2 webencodings defusedxml jupyterlab_pygments bs4 soupsieve pandocfilters.py; do
  cp -r "$sp/$p" "$stage/site/"
done
cp -r "$sp"/{nbconvert,mistune,bleach,tinycss2,webencodings,defusedxml,jupyterlab_pygments,beautifulsoup4,soupsieve,pandocfilters}-*.dist-info "$stage/site/"
cp -r "$($py -c 'import sys; print(sys.prefix)')/share/jupyter/nbconvert" "$stage/site/share/jupyter/"
$py "$here/bench/slim_ray.py" "$ray_whl" "$stage/ray"
mv "$stage"/ray/ray* "$stage/site/"
find "$stage/site" -name __pycache__ -type d -prune -exec rm -rf {} +
rm -rf "$dest"; mkdir -p "$dest/tests"
(cd "$here" && cp -r src bench notebooks workflows pyproject.toml "$dest/" && cp tests/conftest.py "$dest/tests/")
find "$dest" -name __pycache__ -type d -prune -exec rm -rf {} +
tar -C "$stage" -cf - site | xz -9 -T1 > "$dest/site.tar.xz"
echo "$dest: $(du -sh "$dest" | cut -f1) (site.tar.xz $(du -h "$dest/site.tar.xz" | cut -f1))"
