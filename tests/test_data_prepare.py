"""featkit data prepare: digits end to end, tiny fake torchvision copies (arrays and files), verification, offline.

No test touches the network: urllib's opener is replaced by one that fails, as on a machine without network,
so torchvision's real download code runs up to the socket and featkit's offline message is what users see.
"""

from __future__ import annotations

import json
import os
import struct
import urllib.request
from pathlib import Path
from urllib.error import URLError

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from featkit.cli.app import app
from featkit.datasets import prepare as prep
from featkit.datasets.cards import ENV_VAR as CARDS_ENV
from featkit.datasets.cards import get_card
from featkit.errors import InputError

REPO_CARDS = Path(__file__).resolve().parents[1] / "featkit" / "data_cards"


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Every download attempt fails the way it does offline."""
    calls = []

    def offline(request, *args, **kwargs):
        calls.append(getattr(request, "full_url", request))
        raise URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    return calls


@pytest.fixture
def cards_dir(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "cards"
    folder.mkdir()
    monkeypatch.setenv(CARDS_ENV, str(folder))
    return folder


def _card_like(cards_dir: Path, base: str, name: str, replace: dict[str, str]) -> None:
    """A card derived from a real one: the same loader and archives, other name and counts."""
    text = (REPO_CARDS / f"{base}.md").read_text().replace(f"name: {base}\n", f"name: {name}\n", 1)
    for old, new in replace.items():
        assert old in text, old
        text = text.replace(old, new, 1)
    (cards_dir / f"{name}.md").write_text(text)


# --- tiny MNIST in torchvision's raw idx format ----------------------------------------------------------------

def _write_idx(path: Path, array: np.ndarray) -> None:
    """MNIST's idx format: magic (0, 0, uint8 type 0x08, ndim), big-endian dims, then the bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def _tiny_mnist(root: Path, name: str = "tinymnist") -> dict[str, tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(1)
    data = {}
    for split, prefix, n in (("train", "train", 12), ("test", "t10k", 5)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = np.arange(n, dtype=np.uint8) % 10
        _write_idx(root / name / "MNIST" / "raw" / f"{prefix}-images-idx3-ubyte", images)
        _write_idx(root / name / "MNIST" / "raw" / f"{prefix}-labels-idx1-ubyte", labels)
        data[split] = (images, labels)
    return data


@pytest.fixture
def tinymnist(cards_dir):
    _card_like(cards_dir, "mnist", "tinymnist", {"train: 60000": "train: 12", "test: 10000": "test: 5"})
    return "tinymnist"


def test_torchvision_arrays_become_lossless_pngs_with_their_labels(tmp_path, tinymnist):
    data = _tiny_mnist(tmp_path)
    done = prep.prepare(tinymnist, tmp_path, download=False, progress=False)
    assert done.folder == tmp_path / "tinymnist" / "images"
    assert done.counts == {"train": 12, "test": 5}
    classes = list(done.classes)
    assert classes[:2] == ["0 - zero", "1 - one"]
    for split, (images, labels) in data.items():
        for i, (image, label) in enumerate(zip(images, labels, strict=True)):
            png = done.folder / split / classes[label] / f"{i:06d}.png"
            assert np.array_equal(np.asarray(Image.open(png)), image), png
    assert prep.find_prepared(tinymnist, tmp_path) == done


def test_download_true_with_a_complete_copy_does_not_touch_the_network(tmp_path, tinymnist, no_network):
    _tiny_mnist(tmp_path)
    prep.prepare(tinymnist, tmp_path, progress=False)
    assert no_network == []


def test_count_mismatch_is_one_clear_line(tmp_path, cards_dir):
    _card_like(cards_dir, "mnist", "tinymnist", {"train: 60000": "train: 13", "test: 10000": "test: 5"})
    _tiny_mnist(tmp_path)
    with pytest.raises(InputError, match=r"tinymnist split 'train' has 12 images, the card expects 13.*rerun") as exc:
        prep.prepare("tinymnist", tmp_path, download=False, progress=False)
    assert "\n" not in str(exc.value)
    assert not (tmp_path / "tinymnist" / "images").exists()  # verified before anything is written


def test_md5_mismatch_names_the_archive(tmp_path, tinymnist):
    _tiny_mnist(tmp_path)
    bad = tmp_path / "tinymnist" / "MNIST" / "raw" / "train-images-idx3-ubyte.gz"
    bad.write_bytes(b"not the MNIST archive")
    with pytest.raises(InputError, match=r"train-images-idx3-ubyte.gz has md5 [0-9a-f]{32}, .* expects f68b3c2d"):
        prep.prepare(tinymnist, tmp_path, progress=False)


def test_offline_download_is_one_line_saying_what_to_fetch_where(tmp_path, tinymnist, no_network):
    with pytest.raises(InputError) as exc:
        prep.prepare(tinymnist, tmp_path, progress=False)
    message = str(exc.value)
    assert message.startswith("Cannot download tinymnist (no network?)") and "\n" not in message
    assert "https://ossci-datasets.s3.amazonaws.com/mnist/train-images-idx3-ubyte.gz" in message
    assert f"{tmp_path / 'tinymnist' / 'MNIST' / 'raw'}/" in message and "--root" in message
    assert no_network, "torchvision's real download code should have been called"


def test_no_download_never_touches_the_network(tmp_path, tinymnist, no_network):
    with pytest.raises(InputError, match="--no-download was given"):
        prep.prepare(tinymnist, tmp_path, download=False, progress=False)
    assert no_network == []


# --- a file-backed torchvision dataset with the card's seeded split: EuroSAT (an ImageFolder inside) -----------

@pytest.fixture
def tinyeurosat(tmp_path, cards_dir):
    _card_like(cards_dir, "eurosat", "tinyeurosat",
               {"train: 16200": "train: 6", "val: 5400": "val: 2", "test: 5400": "test: 2"})  # fmt: skip
    for cls in ("Forest", "River"):
        for i in range(5):
            path = tmp_path / "tinyeurosat" / "eurosat" / "2750" / cls / f"{cls}_{i + 1}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (4, 4), (i * 40, 0, 0)).save(path)
    return "tinyeurosat"


def test_files_are_hard_linked_into_the_cards_seeded_split(tmp_path, tinyeurosat):
    done = prep.prepare(tinyeurosat, tmp_path, download=False, progress=False)
    assert done.counts == {"train": 6, "val": 2, "test": 2}
    rng = np.random.default_rng(0)  # the card: names sorted per class, one rng, 60/20/20
    for cls in ("Forest", "River"):
        names = sorted(f"{cls}_{i + 1}.jpg" for i in range(5))
        order = [names[i] for i in rng.permutation(5)]
        for split, members in (("train", order[:3]), ("val", order[3:4]), ("test", order[4:])):
            assert sorted(p.name for p in (done.folder / split / cls).iterdir()) == sorted(members)
            for name in members:
                source = tmp_path / "tinyeurosat" / "eurosat" / "2750" / cls / name
                assert os.path.samefile(done.folder / split / cls / name, source)  # a link: not a byte changed


def test_per_class_is_a_separate_folder_recorded_in_the_marker(tmp_path, tinyeurosat):
    full = prep.prepare(tinyeurosat, tmp_path, download=False, progress=False)
    small = prep.prepare(tinyeurosat, tmp_path, download=False, per_class=1, progress=False)
    assert small.folder != full.folder and small.counts == {"train": 2, "val": 2, "test": 2}
    assert json.loads((small.folder / prep.MARKER).read_text())["per_class"] == 1
    assert prep.find_prepared(tinyeurosat, tmp_path) == full
    assert prep.find_prepared(tinyeurosat, tmp_path, per_class=1) == small


def test_an_interrupted_prepare_is_cleared_and_redone(tmp_path, tinyeurosat):
    leftover = tmp_path / "tinyeurosat" / "images" / "train" / "Forest" / "half-written.jpg"
    leftover.parent.mkdir(parents=True)
    leftover.write_bytes(b"")
    assert prep.find_prepared(tinyeurosat, tmp_path) is None
    done = prep.prepare(tinyeurosat, tmp_path, download=False, progress=False)
    assert not leftover.exists() and done.counts["train"] == 6


def test_caltech101_path_scheme_and_per_class_count_split(tmp_path, cards_dir):
    _card_like(cards_dir, "caltech101", "tinycaltech",
               {"train: 3030": "train: 4", "test: 5647": "test: 4",
                "train_per_class: 30": "train_per_class: 2"})  # fmt: skip
    categories = tmp_path / "tinycaltech" / "caltech101" / "101_ObjectCategories"
    for cls in ("BACKGROUND_Google", "ant", "brain"):  # torchvision drops the background class
        for i in range(4):
            (categories / cls).mkdir(parents=True, exist_ok=True)
            (categories / cls / f"image_{i + 1:04d}.jpg").write_bytes(bytes([i]))
    done = prep.prepare("tinycaltech", tmp_path, download=False, progress=False)
    assert done.counts == {"train": 4, "test": 4} and done.classes == ("ant", "brain")
    rng = np.random.default_rng(0)
    for cls in ("ant", "brain"):
        order = [f"image_{i + 1:04d}.jpg" for i in rng.permutation(4)]
        assert sorted(p.name for p in (done.folder / "train" / cls).iterdir()) == sorted(order[:2])
        assert os.path.samefile(done.folder / "test" / cls / order[3], categories / cls / order[3])


# --- folder cards, the imagefolder card ------------------------------------------------------------------------

def test_hymenoptera_existing_unpacked_copy_is_accepted(tmp_path):
    counts = {("train", "ants"): 124, ("train", "bees"): 121, ("val", "ants"): 70, ("val", "bees"): 83}
    for (split, cls), n in counts.items():
        folder = tmp_path / "hymenoptera" / "hymenoptera_data" / split / cls
        folder.mkdir(parents=True)
        for i in range(n):
            (folder / f"{i}.jpg").write_bytes(b"\xff\xd8")
    done = prep.prepare("hymenoptera", tmp_path, download=False, progress=False)
    assert done.counts == {"train": 245, "val": 153} and done.classes == ("ants", "bees")
    assert os.path.samefile(done.folder / "val" / "bees" / "0.jpg",
                            tmp_path / "hymenoptera" / "hymenoptera_data" / "val" / "bees" / "0.jpg")  # fmt: skip


def test_hymenoptera_offline(tmp_path, no_network):
    with pytest.raises(InputError, match=r"^Cannot download hymenoptera \(no network\?\).*hymenoptera_data.zip"):
        prep.prepare("hymenoptera", tmp_path, progress=False)
    assert no_network


def test_imagefolder_card_is_refused_with_what_to_do(tmp_path):
    with pytest.raises(InputError, match="Pass the folder itself to featkit extract"):
        prep.prepare("imagefolder", tmp_path)


# --- digits (embedded) and the CLI -----------------------------------------------------------------------------

def test_digits_matches_the_card_and_a_second_call_does_no_work(tmp_path):
    done = prep.prepare("digits", tmp_path, progress=False)
    card = get_card("digits")
    assert done.counts == dict(card.splits) == {"train": 896, "test": 901}
    assert sum(1 for _ in (done.folder / "test").rglob("*.png")) == 901
    marker = done.folder / prep.MARKER
    before = marker.stat().st_mtime_ns
    assert prep.prepare("digits", tmp_path, progress=False) == done
    assert marker.stat().st_mtime_ns == before


def test_digits_per_class_and_the_cli(tmp_path, monkeypatch):
    monkeypatch.setenv(prep.ENV_VAR, str(tmp_path / "default"))
    result = CliRunner().invoke(app, ["data", "prepare", "digits", "--per-class", "3"])
    assert result.exit_code == 0, result.output
    folder = tmp_path / "default" / "digits" / "images-per_class-3"
    assert str(folder) in result.output and "train: 30 images" in result.output and "test: 30" in result.output
    assert "featkit extract --model resnet50 --layer avgpool" in result.output
    assert all(len(list((folder / "train" / str(d)).iterdir())) == 3 for d in range(10))
    assert CliRunner().invoke(app, ["data", "prepare", "--help"]).exit_code == 0


def test_default_root(monkeypatch, tmp_path):
    monkeypatch.delenv(prep.ENV_VAR, raising=False)
    assert prep.default_root() == Path.home() / ".cache" / "featkit" / "data"
    monkeypatch.setenv(prep.ENV_VAR, str(tmp_path))
    assert prep.default_root() == tmp_path
