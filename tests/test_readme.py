"""Every command in the README's code blocks runs as written, on tiny generated data, so the README can't drift.

Each command runs in its own copy of a sandbox that holds what the README's examples name (``PHOTOS/``,
``feats/``, ``query.jpg``, ``photos.index``, ``runs/pets``, ``~/photos`` ...). Commands that need the network or a
GPU are skipped, each with its reason. ImageNet weights are not on this machine: ``--weights imagenet`` (the
default) loads seeded random weights of the right architecture in their place, through the real cache-and-load
path (only the download is replaced), so every command exercises the code a user's machine would.
"""

from __future__ import annotations

import io
import os
import re
import shlex
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import write_images, write_shards
from PIL import Image
from torchvision import models as tvm
from typer.testing import CliRunner

import featkit
from featkit.backbones import checkpoints
from featkit.backbones.registry import build_module
from featkit.cli.app import app

README = Path(__file__).resolve().parents[1] / "README.md"
SKIP = {  # a command's first words -> why it does not run here
    "make": "runs the project's own set-up, tests or benchmarks",
    "pip install": "installs packages from the network",
    "torchrun": "needs several GPUs",
    "featkit data prepare cifar10": "downloads CIFAR-10",
    "featkit finetune --recipe resnet-2015 --data cifar10": "needs CIFAR-10, downloaded by featkit data prepare",
    "featkit bench --models alexnet,vgg16,resnet50": "downloads the hymenoptera photos (and is a full benchmark)",
    "featkit extract PHOTOS/ -o feats/ --engine ray": "starts Ray, which listens on every interface and probes "
                                                      "outside addresses: tests/test_ray.py runs it with loopback only",
    "featkit serve photos.index --port 9000 --host 0.0.0.0": "listens on every network interface; tests listen on "
                                                            "loopback only (tests/test_serve.py checks the token)",
}
FAST = {"device": "cpu", "workers": 0}


def code_blocks(language: str) -> list[str]:
    """The README's fenced code blocks of one language ("" for plain blocks), in order."""
    blocks, current, opened = [], [], None
    for line in README.read_text().splitlines():
        if line.startswith("```"):
            if opened is None:
                opened, current = line[3:].strip(), []
            else:
                if opened == language:
                    blocks.append("\n".join(current) + "\n")
                opened = None
        elif opened is not None:
            current.append(line)
    return blocks


def commands() -> list[str]:
    found = []
    for block in code_blocks(""):
        for line in block.splitlines():
            command = re.sub(r"\s+#.*$", "", line).strip()
            if command.startswith(("featkit ", "make ", "pip ", "torchrun ")):
                found.append(command)
    return found


def skip_reason(command: str) -> str | None:
    return next((why for start, why in SKIP.items() if command.startswith(start)), None)


@pytest.fixture(scope="module")
def fake_imagenet(tmp_path_factory):
    """Stand-ins for torchvision's ImageNet checkpoints: seeded random weights, written where the cache would be."""
    cache = tmp_path_factory.getbasetemp().parent / "fake-imagenet"  # shared by the test processes (~1 GB)
    cache.mkdir(exist_ok=True)
    urls = {}
    for name in tvm.list_models(module=tvm):
        try:
            enum = tvm.get_model_weights(name).DEFAULT
        except (ValueError, KeyError):
            continue
        urls[enum.url] = (name, len(enum.meta["categories"]))

    def fetch(url: str, *, download: bool = True) -> Path:
        path = cache / os.path.basename(url)
        if not path.exists():
            name, classes = urls[url]
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)
                tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
                # saved through memory: torch.save names the archive inside after the file, and a pid in it would
                # give each test process's copy another sha256 (a store made with one, searched with the other)
                data = io.BytesIO()
                torch.save(build_module(name, num_classes=classes).state_dict(), data)
                tmp.write_bytes(data.getvalue())
                os.replace(tmp, path)  # another test process may be writing the same bytes
        return path

    return fetch


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory, fake_imagenet):
    """What the README's examples point at, made once; each command gets its own copy."""
    root = tmp_path_factory.mktemp("readme")
    patch = pytest.MonkeyPatch()
    patch.setattr(checkpoints, "fetch_checkpoint", fake_imagenet)
    patch.chdir(root)
    try:
        write_images(root / "PHOTOS" / "train", classes=2, per_class=4, size=(64, 48))
        write_images(root / "PHOTOS" / "test", classes=2, per_class=2, size=(64, 48), seed=1)
        write_images(root / "home" / "photos" / "train", classes=2, per_class=4, size=(64, 48), seed=2)
        write_images(root / "home" / "photos" / "test", classes=2, per_class=2, size=(64, 48), seed=3)
        write_images(root / "queries", classes=1, per_class=2, size=(64, 48), seed=4)
        write_images(root / "more", classes=1, per_class=2, size=(64, 48), seed=5)
        shutil.copy(root / "queries" / "c0" / "000.png", root / "query.jpg")  # content decides, not the name
        write_shards(root / "PHOTOS" / "train", root / "shards", per_shard=4)  # img2dataset's layout
        files = sorted((root / "PHOTOS" / "train").rglob("*.png"))[:4]
        (root / "list.csv").write_text("path,label\n" + "".join(f"{f},{f.parent.name}\n" for f in files))
        torch.save(build_module("alexnet").state_dict(), root / "my_finetuned.pth")
        torch.save(build_module("squeezenet1_1").state_dict(), root / "init.pth")
        fc7 = {"model": "alexnet", "layers": ["fc7"], **FAST}
        featkit.extract(root / "PHOTOS", root / "feats", **fc7)
        featkit.extract(root / "PHOTOS" / "train", root / "train_feats", **fc7)
        featkit.extract(root / "PHOTOS" / "test", root / "test_feats", **fc7)
        featkit.extract(root / "more", root / "more_feats", **fc7)
        featkit.Index.build(root / "feats", tap="fc7").save(root / "photos.index")
        result = CliRunner().invoke(app, ["finetune", "--recipe", "linear-head", "--model", "resnet50", "--data",
                                          str(root / "PHOTOS"), "-o", str(root / "runs" / "pets"), "-q",
                                          "--set", "epochs=1", "--set", "weights=random"], catch_exceptions=False)
        assert result.exit_code == 0, result.output
    finally:
        patch.undo()
    return root


@pytest.fixture
def work(sandbox, tmp_path):
    """The sandbox itself (the stores in it name their images by absolute path), restored after each command.

    The backup is hard links: featkit replaces files (temp file, rename), never rewrites one in place, so the
    linked originals stay as they were, modification times included, at no cost in disk space.
    """
    backup = tmp_path / "backup"
    shutil.copytree(sandbox, backup, symlinks=True, copy_function=os.link)
    yield sandbox
    shutil.rmtree(sandbox)
    shutil.copytree(backup, sandbox, symlinks=True, copy_function=os.link)
    shutil.rmtree(backup)


def outputs(argv: list[str]) -> list[str]:
    """What a command writes with -o/--output (removed first: the README's commands make new outputs)."""
    return [argv[i + 1] for i, a in enumerate(argv[:-1]) if a in ("-o", "--output")]


def serve_once(monkeypatch) -> None:
    """``featkit serve`` on a free loopback port, answering one request for its info, then stopping."""
    import dataclasses
    import http.client
    import threading

    import uvicorn

    from featkit.serve import server
    from featkit.serve.app import create_app

    bind = server.bind
    monkeypatch.setattr(server, "bind", lambda config: bind(dataclasses.replace(config, port=0)))

    def serve(library, config, sock) -> None:
        config = dataclasses.replace(config, port=sock.getsockname()[1])
        running = uvicorn.Server(uvicorn.Config(create_app(library, config), log_level="warning", lifespan="on"))
        thread = threading.Thread(target=running.run, kwargs={"sockets": [sock]}, daemon=True)
        thread.start()
        while not running.started and thread.is_alive():
            threading.Event().wait(0.02)
        try:
            conn = http.client.HTTPConnection("127.0.0.1", config.port, timeout=30)
            conn.request("GET", "/api/info", headers={"Host": f"127.0.0.1:{config.port}"})
            answer = conn.getresponse()
            assert answer.status == 200 and b'"model"' in answer.read()
        finally:
            running.should_exit = True
            thread.join(timeout=30)

    monkeypatch.setattr(server, "serve", serve)


@pytest.mark.slow
@pytest.mark.parametrize("command", commands())
def test_readme_command_runs_as_written(command, work, fake_imagenet, monkeypatch):
    why = skip_reason(command)
    if why:
        pytest.skip(why)
    monkeypatch.chdir(work)
    monkeypatch.setenv("HOME", str(work / "home"))
    monkeypatch.setenv("FEATKIT_CACHE", str(work / "cache"))
    monkeypatch.setenv("FEATKIT_DATA", str(work / "data"))
    monkeypatch.setattr(checkpoints, "fetch_checkpoint", fake_imagenet)
    words = shlex.split(command)
    redirect = None
    if ">" in words:
        redirect = words[words.index(">") + 1]
        words = words[: words.index(">")]
    argv = [os.path.expanduser(w) if w.startswith("~") else w for w in words[1:]]
    if argv[:1] in (["extract"], ["finetune"]) or argv[:2] == ["index", "build"]:
        for out in outputs(argv):
            shutil.rmtree(out, ignore_errors=True)
    if argv[0] == "serve":
        serve_once(monkeypatch)
    result = CliRunner().invoke(app, argv, catch_exceptions=False)
    assert result.exit_code == 0, f"{command}\n{result.output}"
    if redirect:
        Path(redirect).write_text(result.stdout)


@pytest.mark.slow
@pytest.mark.parametrize("block", range(len(code_blocks("python"))))
def test_readme_python_block_runs_as_written(block, work, fake_imagenet, monkeypatch):
    code = code_blocks("python")[block]
    monkeypatch.chdir(work)
    monkeypatch.setattr(checkpoints, "fetch_checkpoint", fake_imagenet)
    for out in re.findall(r'featkit\.extract\("[^"]*", "([^"]*)"', code) + re.findall(r'\.save\("([^"]*)"\)', code):
        shutil.rmtree(out, ignore_errors=True)  # what the block makes anew
    namespace = {"np": np, "Image": Image}
    exec(compile(code, f"README.md python block {block}", "exec"), namespace)  # noqa: S102 - the README's own code
