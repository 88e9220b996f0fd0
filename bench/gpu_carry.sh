#!/usr/bin/env bash
# Carry NVIDIA DALI (nvidia-dali-cuda130, a 199 MB wheel) and nvImageCodec to the lent GPU machine, which reaches no
# package registry and takes at most 64 MiB a call (the checkout it sends included: 34.3 MB here in December 2026,
# so a part is ~30 MB, not the 55 MB one would guess from the limit alone). Used for bench/gpu_limit.py (issue 25).
#
# Here (this machine, pip and the network):
#   bench/gpu_carry.sh fetch          download the wheels into .gpuwork/dl of the checkout the device tool sends
#   bench/gpu_carry.sh stage          refresh .gpuwork/run/ alone (bench edited, parts unchanged)
#   bench/gpu_carry.sh split [BYTES]  .gpuwork/w0/: nvImageCodec + nvJPEG whole (call 1 can use them at once);
#                                     .gpuwork/pNN/: DALI and its small pure/compiled needs as one tar in parts;
#                                     .gpuwork/run/{bench,src}/: this checkout's bench/ and package (the device sends the session's
#                                     checkout, not a helper's worktree); prints the calls to make
# There (one device call per part, back to back: the machine stays warm only 30 s after a call, /tmp lives as long
# as the machine, and a carried folder is gone from the device's checkout once a call does not name it):
#   call 1      carry [.gpuwork/w0, .gpuwork/run]    bash .gpuwork/run/bench/gpu_carry.sh put w0
#   calls 2-7   carry [.gpuwork/pNN]                 mkdir -p /tmp/parts && cp .gpuwork/pNN/* /tmp/parts/
#   last call   carry [.gpuwork/p06, .gpuwork/run]   bash .gpuwork/run/bench/gpu_carry.sh put p06 &&
#               bash .gpuwork/run/bench/gpu_carry.sh install && export PYTHONPATH=/tmp/site
#               LD_LIBRARY_PATH=/tmp/site/nvidia/cu13/lib YOLO_OFFLINE=1 && python3 .gpuwork/run/bench/gpu_limit.py ...
# (w0 with a part would pass 64 MiB.) Measured 2026-12-06 on the lent H100: ~3 s a part call once warm.
# Call 1 also carries Ultralytics (the bench loads the .pt through it), 1.5 MB.
# `install` joins the parts, checks the sha256 written by `split`, and installs every wheel with one
# `pip install --no-index --no-deps --target /tmp/site` (one command: pip --target replaces a namespace folder such
# as nvidia/ that an earlier --target install made, so two installs would lose one package).
# Left out on purpose: nvidia-libnvcomp-cu13 (28.5 MB; DALI dlopens libnvcomp only for its decompression operators,
# checked with readelf: no DT_NEEDED), nvImageCodec's nvjpeg2k/nvtiff extras (JPEG 2000 / TIFF only).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
if git -C "$here" rev-parse --git-common-dir >/dev/null 2>&1; then
  top=$(cd "$(git -C "$here" rev-parse --path-format=absolute --git-common-dir)/.." && pwd)
else
  top=$here
fi
work=$top/.gpuwork
DALI=${DALI:-nvidia-dali-cuda130==2.4.0}
FIRST="nvidia-nvimgcodec-cu13==0.9.0.20 nvidia-nvjpeg==13.3.2.43 ultralytics==8.4.190 ultralytics-thop==2.2.3"
REST="$DALI astunparse==1.6.3 gast==0.7.0 optree==0.20.0 nvtx==0.2.17 makefun==1.16.0 libcst==1.9.0"
pipdl() {
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$@"
}
case ${1:-} in
fetch)
  grep -qxF '/.gpuwork/' "$top/.git/info/exclude" 2>/dev/null || { mkdir -p "$top/.git/info"; echo '/.gpuwork/' >> "$top/.git/info/exclude"; }
  mkdir -p "$work/dl/first" "$work/dl/rest"
  pipdl "$work/dl/first" $FIRST
  pipdl "$work/dl/rest" $REST
  du -sh "$work/dl/first" "$work/dl/rest"
  ;;
split)
  tracked=$(git -C "$top" ls-files -z | (cd "$top" && xargs -0 du -cb 2>/dev/null) | tail -1 | cut -f1)
  bytes=${2:-$(( 64 * 1024 * 1024 - tracked - 3 * 1024 * 1024 ))}
  echo "checkout that travels: $tracked bytes; part size: $bytes bytes"
  rm -rf "$work"/w0 "$work"/p[0-9][0-9] "$work/run"
  mkdir -p "$work/w0" "$work/run"
  cp "$work"/dl/first/*.whl "$work/w0/"
  cp -r "$here/bench" "$work/run/"
  mkdir -p "$work/run/src" && cp -r "$here/src/yolo_compile" "$work/run/src/"  # the bench's own package, whatever the sent checkout holds
  find "$work/run" -name __pycache__ -type d -prune -exec rm -rf {} +
  stage=$(mktemp -d); trap 'rm -rf "$stage"' EXIT
  tar -C "$work/dl/rest" -cf "$stage/rest.tar" .
  (cd "$stage" && sha256sum rest.tar > rest.tar.sha256 && split -b "$bytes" -d -a 2 rest.tar rest.tar.part)
  n=0
  for f in "$stage"/rest.tar.part*; do
    i=$(printf %02d $n); mkdir -p "$work/p$i"; mv "$f" "$work/p$i/"; n=$((n + 1))
  done
  last=$(printf %02d $((n - 1)))
  cp "$stage/rest.tar.sha256" "$work/p$last/"
  w0=$(du -cb "$work"/w0/* | tail -1 | cut -f1)
  echo "w0 (whole wheels): $w0 bytes; $n parts of the DALI tar (p00..p$last); run/: $(du -sb "$work/run" | cut -f1) bytes"
  [ $((w0 + tracked)) -lt $((64 * 1024 * 1024)) ] || echo "WARNING: w0 with the checkout is over 64 MiB: carry w0 alone in call 1"
  echo "calls (back to back):"
  echo "  1: carry [.gpuwork/w0, .gpuwork/run]: bash .gpuwork/run/bench/gpu_carry.sh put w0 && <smoke test>"
  for i in $(seq -w 0 "$last"); do
    if [ "$i" = "$last" ]; then
      echo "  last: carry [.gpuwork/p$i, .gpuwork/run]: bash .gpuwork/run/bench/gpu_carry.sh put p$i && bash .gpuwork/run/bench/gpu_carry.sh install && <bench>"
    else
      echo "  carry [.gpuwork/p$i]: mkdir -p /tmp/parts && cp .gpuwork/p$i/* /tmp/parts/"
    fi
  done
  ;;
stage)  # here: refresh .gpuwork/run/ only (after editing the bench; the parts stay as they are)
  rm -rf "$work/run"; mkdir -p "$work/run/src"
  cp -r "$here/bench" "$work/run/" && cp -r "$here/src/yolo_compile" "$work/run/src/"
  find "$work/run" -name __pycache__ -type d -prune -exec rm -rf {} +
  echo "$work/run: $(du -sb "$work/run" | cut -f1) bytes"
  ;;
put)  # device: copy one carried folder into /tmp/parts
  mkdir -p /tmp/parts
  cp ".gpuwork/$2"/* /tmp/parts/
  ls -la /tmp/parts
  ;;
install)  # device: join, verify, install all wheels with one pip command into /tmp/site
  cd /tmp/parts
  cat rest.tar.part* > /tmp/rest.tar
  (cd /tmp && sha256sum -c /tmp/parts/rest.tar.sha256)
  rm -rf /tmp/whl && mkdir -p /tmp/whl && tar -C /tmp/whl -xf /tmp/rest.tar && cp /tmp/parts/*.whl /tmp/whl/
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site /tmp/whl/*.whl
  echo "installed into /tmp/site: $(ls /tmp/whl | tr '\n' ' ')"
  echo 'then: export PYTHONPATH=/tmp/site LD_LIBRARY_PATH=/tmp/site/nvidia/cu13/lib:${LD_LIBRARY_PATH:-}' 
  ;;
*)
  sed -n '2,28p' "$0"; exit 2;;
esac
