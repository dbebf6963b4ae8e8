"""The web app in a real browser: headless Chromium (Debian's chromium and chromium-driver) driven by Selenium.

The server and the browser run inside a private network namespace with only loopback up (``unshare --net``), so
the test cannot reach any other address whatever Chromium tries. Screenshots are kept in ``test-artifacts/`` at
the repository's root (ignored by git): look at them.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import HYMENOPTERA, SQUEEZENET_WEIGHTS

pytest.importorskip("fastapi", reason="featkit serve needs the serve extra: pip install 'featkit[serve]'")
pytest.importorskip("selenium", reason="the browser test needs selenium (pip install -e '.[dev]')")

from helpers import private_network  # noqa: E402
from serving import tiny_index  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
FLOW = Path(__file__).with_name("serve_browser_flow.py")
ARTIFACTS = REPO / "test-artifacts"


def browser_on_loopback() -> list[str]:
    """The command prefix running the browser flow with loopback only, or a skip saying why it cannot run."""
    if not (os.path.exists("/usr/bin/chromium") and os.path.exists("/usr/bin/chromedriver")):
        pytest.skip("needs Debian's chromium and chromium-driver at /usr/bin (apt-get install chromium "
                    "chromium-driver; .ci/run installs them)")
    return private_network("the browser")


@pytest.mark.slow
def test_upload_a_photo_see_the_grid_click_a_result_see_a_new_grid(tmp_path):
    prefix = browser_on_loopback()
    real = SQUEEZENET_WEIGHTS.is_file() and HYMENOPTERA.is_dir()
    if real:  # the shared photos and weights: the grid must make sense, not just appear
        import featkit
        from featkit.index import Index

        featkit.extract(HYMENOPTERA / "train", tmp_path / "train", model="squeezenet1_1", layers=["fire9"],
                        pool="avg", weights=str(SQUEEZENET_WEIGHTS), device="cpu", batch_size=32)
        Index.build(tmp_path / "train", weights=SQUEEZENET_WEIGHTS).save(tmp_path / "train.index")
        index, query = tmp_path / "train.index", sorted((HYMENOPTERA / "val" / "bees").glob("*.jpg"))[3]
    else:
        index, query = tiny_index(tmp_path), tmp_path / "photos" / "c1" / "002.jpg"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([*prefix, sys.executable, str(FLOW), str(index), str(query), str(tmp_path / "shots"),
                           "--k", "8"], capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    ARTIFACTS.mkdir(exist_ok=True)
    for shot in (tmp_path / "shots").glob("*.png"):
        shutil.copy(shot, ARTIFACTS / shot.name)

    assert seen["header"]["model"] == "squeezenet1_1" and seen["header"]["tap"] == "fire9 (avg pool)"
    assert seen["header"]["size"].startswith("245 images" if real else "18 images")
    assert len(seen["upload_results"]) == 8
    assert seen["clicked"] == seen["upload_results"][1]
    assert len(seen["click_results"]) == 8 and seen["clicked"] not in seen["click_results"]
    assert seen["click_results"] != seen["upload_results"]
    assert seen["browse_tiles"] == (60 if real else 18) and seen["map_drawn"] > 100
    assert "cosine" in seen["duplicates_status"]
    assert seen["console"] == [], seen["console"]  # a CSP violation or script error shows here
    if real:
        assert seen["upload_labels"].count("bees") >= 5, seen["upload_labels"]  # a bee finds bees
