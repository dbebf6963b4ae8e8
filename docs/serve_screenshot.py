"""Makes docs/serve.png: featkit serve in headless Chromium over generated pictures (the shared photos stay out of
the repository), with the real SqueezeNet weights when ../shared has them.

    python docs/serve_screenshot.py            # needs chromium, chromium-driver and the serve extra
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

REPO = Path(__file__).resolve().parents[1]
WEIGHTS = Path(os.environ.get("FEATKIT_SHARED") or REPO.parent / "shared") / "weights" / "squeezenet1_1-imagenet.pth"


def picture(kind: str, rng: np.random.Generator, size=(240, 180)) -> Image.Image:
    w, h = size
    back = tuple(int(v) for v in rng.integers(150, 255, 3))
    ink = tuple(int(v) for v in rng.integers(0, 120, 3))
    image = Image.new("RGB", size, back)
    draw = ImageDraw.Draw(image)
    if kind == "dots":
        for _ in range(int(rng.integers(6, 14))):
            x, y, r = rng.integers(0, w), rng.integers(0, h), rng.integers(8, 26)
            draw.ellipse((x - r, y - r, x + r, y + r), fill=ink)
    elif kind == "stripes":
        step = int(rng.integers(14, 30))
        for x in range(-h, w + h, step):
            draw.line((x, 0, x + h, h), fill=ink, width=step // 2)
    elif kind == "checks":
        step = int(rng.integers(18, 40))
        for i, x in enumerate(range(0, w, step)):
            for j, y in enumerate(range(0, h, step)):
                if (i + j) % 2:
                    draw.rectangle((x, y, x + step, y + step), fill=ink)
    else:  # rings
        cx, cy = rng.integers(60, w - 60), rng.integers(50, h - 50)
        for r in range(int(rng.integers(6, 12)), 160, int(rng.integers(12, 22))):
            draw.ellipse((cx - r, cy - r, cx + r, cy + r), outline=ink, width=5)
    return image


def main() -> None:
    import featkit
    from featkit.index import Index

    rng = np.random.default_rng(7)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for kind in ("dots", "stripes", "checks", "rings"):
            (root / "pictures" / kind).mkdir(parents=True)
            for i in range(30):
                picture(kind, rng).save(root / "pictures" / kind / f"{kind}_{i:02d}.jpg", quality=90)
        query = root / "query.jpg"
        picture("stripes", rng).save(query, quality=90)
        weights = str(WEIGHTS) if WEIGHTS.is_file() else "random"
        featkit.extract(root / "pictures", root / "feats", model="squeezenet1_1", layers=["fire9"], pool="avg",
                        weights=weights, device="cpu")
        Index.build(root / "feats", weights=weights if weights != "random" else None).save(root / "p.index")
        done = subprocess.run(["unshare", "--net", "--", "sh", "-c", 'ip link set lo up && exec "$@"', "sh",
                               sys.executable, str(REPO / "tests" / "serve_browser_flow.py"), str(root / "p.index"),
                               str(query), str(root / "shots"), "--k", "8"], capture_output=True, text=True)
        if done.returncode:
            raise SystemExit(done.stderr[-2000:])
        print(json.loads(done.stdout.strip().splitlines()[-1])["upload_labels"])
        shot = Image.open(root / "shots" / "serve-upload.png").convert("RGB")
        shot = shot.crop((0, 0, shot.width, 760))
        shot.thumbnail((1000, 1000))
        shot.quantize(colors=128).save(REPO / "docs" / "serve.png", optimize=True)
    print(f"wrote docs/serve.png ({(REPO / 'docs' / 'serve.png').stat().st_size // 1024} KB)")


if __name__ == "__main__":
    main()
