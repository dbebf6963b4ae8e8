"""featkit serve on the real ants/bees photos with the real SqueezeNet weights, and under load on loopback.

Every val photo is uploaded through the API (as the page does) to an index of the train photos: the majority label
of its 5 neighbours must be right for ≥ 85 %. A planted near-copy shows up as a near-duplicate group, the larger
copy kept. 200 concurrent searches against a real server are all answered, and the server stays up.
"""

from __future__ import annotations

import asyncio
import shutil
import statistics

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi", reason="featkit serve needs the serve extra: pip install 'featkit[serve]'")

import httpx  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402
from serving import running_server  # noqa: E402

import featkit  # noqa: E402
from featkit.index import Index  # noqa: E402
from featkit.serve.app import ServeConfig, create_app  # noqa: E402
from featkit.serve.library import Library  # noqa: E402

pytestmark = [pytest.mark.usefixtures("shared_weights", "hymenoptera"),
              pytest.mark.filterwarnings("ignore::DeprecationWarning")]
BASE = "http://127.0.0.1:8765"


@pytest.fixture(scope="module")
def served(tmp_path_factory, shared_weights, hymenoptera):
    root = tmp_path_factory.mktemp("served")
    train = root / "train"
    shutil.copytree(hymenoptera / "train", train)
    original = sorted((train / "ants").glob("*.jpg"))[5]
    with Image.open(original) as photo:  # re-encoded smaller: the original (same pixels, more bytes) is kept
        photo.save(train / "ants" / "copy_of_one.jpg", quality=85)
    featkit.extract(train, root / "feats", model="squeezenet1_1", layers=["fire9"], pool="avg",
                    weights=str(shared_weights), device="cpu", batch_size=32)
    Index.build(root / "feats", weights=shared_weights).save(root / "train.index")
    library = Library(Index.open(root / "train.index"), device="cpu")
    with TestClient(create_app(library, ServeConfig()), base_url=BASE) as client:
        yield {"client": client, "library": library, "original": original, "copy": train / "ants" / "copy_of_one.jpg"}


def test_five_neighbours_of_uploaded_val_photos_vote_the_right_label(served, hymenoptera):
    client = served["client"]
    right = total = 0
    for photo in sorted((hymenoptera / "val").glob("*/*.jpg")):
        answer = client.post("/api/search?k=5", files={"image": (photo.name, photo.read_bytes(), "image/jpeg")})
        assert answer.status_code == 200, answer.text
        labels = [r["label"] for r in answer.json()["results"]]
        right += max(set(labels), key=labels.count) == photo.parent.name
        total += 1
    assert total == 153
    print(f"5-NN majority over {total} uploaded val photos: {right / total:.3f}")
    assert right / total >= 0.85, right / total


def test_an_upload_finds_what_the_library_search_finds(served, hymenoptera):
    photo = sorted((hymenoptera / "val" / "ants").glob("*.jpg"))[0]
    answer = served["client"].post("/api/search?k=10", files={"image": ("q.jpg", photo.read_bytes(), "image/jpeg")})
    expected = served["library"].index.search(str(photo), k=10, device="cpu")
    assert [r["id"] for r in answer.json()["results"]] == expected["id"].tolist()
    np.testing.assert_allclose([r["score"] for r in answer.json()["results"]], expected["score"], atol=1e-5)


def test_the_planted_copy_is_a_near_duplicate_group_keeping_the_original(served):
    groups = served["client"].get("/api/duplicates").json()["groups"]
    mine = [g for g in groups if str(served["copy"]) in {m["path"] for m in g["members"]}]
    assert len(mine) == 1
    members = {m["path"]: m for m in mine[0]["members"]}
    assert members[str(served["original"])]["keep"] and not members[str(served["copy"])]["keep"]
    assert members[str(served["copy"])]["score"] >= 0.92


def test_200_concurrent_searches_are_all_answered_and_the_server_stays_up(served, hymenoptera):
    photos = [p.read_bytes() for p in sorted((hymenoptera / "val").glob("*/*.jpg"))[:20]]

    async def storm(base: str) -> list[tuple[int, float]]:
        limits = httpx.Limits(max_connections=200)
        async with httpx.AsyncClient(base_url=base, limits=limits, timeout=120) as client:
            async def one(i: int) -> tuple[int, float]:
                loop = asyncio.get_running_loop()
                start = loop.time()
                if i % 2:
                    answer = await client.get(f"/api/search?id={i % 240}&k=10")
                else:
                    answer = await client.post("/api/search?k=10",
                                               files={"image": ("q.jpg", photos[i % len(photos)], "image/jpeg")})
                return answer.status_code, loop.time() - start

            return await asyncio.gather(*(one(i) for i in range(200)))

    with running_server(served["library"], ServeConfig()) as base:
        answers = asyncio.run(storm(base))
        assert [status for status, _ in answers] == [200] * 200
        assert httpx.get(f"{base}/api/info", timeout=30).status_code == 200
    latencies = sorted(t for _, t in answers)
    print(f"200 concurrent: p50 {statistics.median(latencies):.2f} s, max {latencies[-1]:.2f} s")
