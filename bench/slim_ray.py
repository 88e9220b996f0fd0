#!/usr/bin/env python
"""Make a small copy of Ray for an offline machine: what a local `ray.init` plus tasks load, nothing else.

  python bench/slim_ray.py RAY.whl OUT_DIR            # from a wheel (any Python version)
  python bench/slim_ray.py SITE/ray OUT_DIR           # from an installed ray folder
  python bench/slim_ray.py RAY.whl OUT_DIR --tar      # and OUT_DIR.tar.xz, what travels

The ray 2.60 wheel is 79 MB (202 MB unpacked); a lent machine takes 64 MiB a call with the checkout. Dropped:
the Java jar (34 MB), the dashboard's web client, the libraries built on Ray that a matrix never imports (rllib,
tune, train, serve, data, llm, air, workflow), compiled bytecode; the three native binaries
(`_raylet.so`, `gcs_server`, `raylet`) lose their symbol tables (`strip`; the dynamic symbols stay). What is left
is ray core with its runtime-env and dashboard agents (the raylet starts both), and ray.cluster_utils for the
cluster tests. `bench/README.md` records the check that the bench's Ray path runs from this copy alone.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

DROP = ("jars", "dashboard/client", "rllib", "tune", "train", "serve", "data", "llm", "air", "workflow",
        "cpp", "setup-dev.py")
STRIP = ("_raylet.so", "core/src/ray/gcs/gcs_server", "core/src/ray/raylet/raylet")


def size(p: Path) -> int:
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("source", type=Path, help="a ray wheel, or an installed ray/ folder")
    ap.add_argument("out", type=Path, help="folder to create; it will hold ray/ and its dist-info (put it on PYTHONPATH)")
    ap.add_argument("--tar", action="store_true", help="also write OUT.tar.xz")
    args = ap.parse_args()
    if args.out.exists():
        shutil.rmtree(args.out)
    args.out.mkdir(parents=True)
    if args.source.suffix == ".whl":
        with zipfile.ZipFile(args.source) as z:
            for info in z.infolist():
                if info.filename.startswith("ray/") or info.filename.split("/")[0].endswith(".dist-info"):
                    z.extract(info, args.out)
                    mode = (info.external_attr >> 16) & 0o777
                    if mode:
                        (args.out / info.filename).chmod(mode)
    else:
        shutil.copytree(args.source, args.out / "ray", symlinks=True)
        for d in args.source.parent.glob("ray-*.dist-info"):  # its version, for importlib.metadata
            shutil.copytree(d, args.out / d.name)
    ray = args.out / "ray"
    before = size(ray)
    for rel in DROP:
        p = ray / rel
        shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)
    for d in [d for d in ray.rglob("__pycache__") if d.is_dir()]:
        shutil.rmtree(d)
    for rel in STRIP:
        subprocess.run(["strip", "--strip-unneeded", str(ray / rel)], check=True)
    print(f"{args.source.name}: ray/ {before / 1e6:.1f} MB -> {size(ray) / 1e6:.1f} MB in {args.out}")
    if args.tar:
        tar = args.out.with_name(args.out.name + ".tar.xz")
        with tarfile.open(tar, "w:xz", preset=9) as t:
            t.add(ray, arcname="ray")
        print(f"{tar}: {tar.stat().st_size / 1e6:.1f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
