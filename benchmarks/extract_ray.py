"""What ``--engine ray`` costs and gives on one machine, against the local engine on the same CPU.

N synthetic 500×375 JPEGs, ResNet-18 avgpool (random weights), batch 32, shard 128 rows; the same store each way.

* local: one process (``featkit extract``), then ``--procs 2`` (two processes splitting the cores).
* ray: a local Ray started by the run, 2 actors × 1 CPU (``--actors 2``); and the same run on 32 images, whose
  time is almost all Ray's fixed start-up (starting Ray, two actors importing torch and loading the model).

Steady-state images/s for Ray = (N − 32) / (time(N) − time(32)). Ray runs inside a private network namespace
(``unshare --net``, loopback only) when this script can make one, as the tests do.

Usage:  python benchmarks/extract_ray.py [--images 512]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OPTS = dict(model="resnet18", layers=["avgpool"], weights="random", device="cpu", batch_size=32, shard_rows=128)


def photos(root: Path, n: int) -> Path:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(n):
        folder = root / f"c{i % 4}"
        folder.mkdir(parents=True, exist_ok=True)
        pixels = (rng.random((375, 500, 3)) * 40 + np.linspace(0, 200, 500)[None, :, None]).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"{i:05d}.jpg", quality=90)
    return root


def timed_extract(images, out: Path, **extra) -> float:
    import featkit

    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    featkit.extract(images, out, **OPTS, **extra)
    return time.perf_counter() - start


def ray_job(images: Path, out: Path, subset: list[str]) -> dict:
    """Both Ray runs, in a private network namespace where possible."""
    script = f"""
import json, shutil, time, featkit
from pathlib import Path
opts = {OPTS!r}
def run(inputs, out):
    shutil.rmtree(out, ignore_errors=True)
    t = time.perf_counter(); featkit.extract(inputs, out, engine="ray", actors=2, **opts)
    return time.perf_counter() - t
small = run({subset!r}, {str(out / "small")!r})
full = run({str(images)!r}, {str(out / "full")!r})
print(json.dumps({{"small": small, "full": full}}))
"""
    job = out / "job.py"
    job.write_text(script)
    ray_tmp = tempfile.mkdtemp(prefix="fkray")
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_TMPDIR": ray_tmp, "PYTHONPATH": str(REPO)}
    prefix: list[str] = []
    if shutil.which("unshare") and subprocess.run(["unshare", "--net", "true"], capture_output=True).returncode == 0:
        prefix = ["unshare", "--net", "--", "sh", "-c", 'ip link set lo up && exec "$@"', "sh"]
    try:
        done = subprocess.run([*prefix, sys.executable, str(job)], capture_output=True, text=True, env=env)
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    if done.returncode:
        raise SystemExit(done.stderr[-2000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=512)
    args = parser.parse_args()
    n = args.images
    with tempfile.TemporaryDirectory(prefix="fkbench") as tmp:
        root = Path(tmp)
        images = photos(root / "imgs", n)
        subset = sorted(str(p) for p in images.rglob("*.jpg"))[:32]
        local = timed_extract(images, root / "local")
        procs = timed_extract(images, root / "procs", procs=2)
        ray = ray_job(images, root, subset)
    steady = (n - 32) / max(1e-9, ray["full"] - ray["small"])
    print(f"featkit extract on {n} 500×375 JPEGs, resnet18 avgpool, batch 32; {platform.machine()}, "
          f"{os.cpu_count()} cores\n")
    print("| engine | wall s | images/s (whole run) | note |")
    print("|---|---:|---:|---|")
    print(f"| local, 1 process | {local:.1f} | {n / local:.1f} | |")
    print(f"| local, --procs 2 | {procs:.1f} | {n / procs:.1f} | |")
    print(f"| ray, 2 actors × 1 CPU | {ray['full']:.1f} | {n / ray['full']:.1f} | steady state {steady:.1f} images/s |")
    print(f"| ray, 32 images | {ray['small']:.1f} | {32 / ray['small']:.1f} | ≈ Ray's fixed start-up cost |")


if __name__ == "__main__":
    main()
