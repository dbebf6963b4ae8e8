"""Helpers for the web app's tests: a small index over generated photos, and a real server on loopback."""

from __future__ import annotations

import contextlib
import dataclasses
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from helpers import write_images

import featkit
from featkit.index import Index


def tiny_index(root: Path, *, classes: int = 3, per_class: int = 6) -> Path:
    """``root/photos/c<k>/*.jpg`` → ``root/feats`` (SqueezeNet fire9, random weights) → ``root/photos.index``."""
    write_images(root / "photos", classes=classes, per_class=per_class, size=(64, 48), fmt="jpg")
    featkit.extract(root / "photos", root / "feats", model="squeezenet1_1", layers=["fire9"], pool="avg",
                    weights="random", device="cpu", batch_size=8)
    Index.build(root / "feats", kind="flat").save(root / "photos.index")
    return root / "photos.index"


@contextlib.contextmanager
def running_server(library, config) -> Iterator[str]:
    """``library`` served by uvicorn on a thread at 127.0.0.1 (a free port); yields its address, then stops it."""
    import uvicorn

    from featkit.serve.app import create_app
    from featkit.serve.server import bind

    sock = bind(dataclasses.replace(config, port=0))
    config = dataclasses.replace(config, port=sock.getsockname()[1])
    server = uvicorn.Server(uvicorn.Config(create_app(library, config), log_level="warning", access_log=False,
                                           lifespan="on", proxy_headers=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{config.port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()
