"""featkit data prepare: digits end to end, tiny fake torchvision copies (arrays and files), verification, offline.

No test touches the network: urllib's opener is replaced by one that fails, as on a machine without network,
so torchvision's real download code runs up to the socket and featkit's offline message is what users see.
"""

from __future__ import annotations

import json
import os
import struct
import tarfile
import urllib.request
import zipfile
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


# --- copies people already have: unpacked folders (or archives) under ROOT/NAME, --from, errors, cleanup ------

def _tree(path: Path) -> list[tuple[str, str]]:
    """Everything under ``path`` (symlinks not followed): relative path and kind, link target or content."""
    out = []
    for folder, dirs, files in os.walk(path):
        for name in dirs + files:
            p = Path(folder) / name
            kind = f"-> {os.readlink(p)}" if p.is_symlink() else "dir" if p.is_dir() else p.read_bytes().hex()
            out.append((str(p.relative_to(path)), kind))
    return sorted(out)


@pytest.fixture
def tinycaltech(cards_dir):
    _card_like(cards_dir, "caltech101", "tinycaltech",
               {"train: 3030": "train: 4", "test: 5647": "test: 4",
                "train_per_class: 30": "train_per_class: 2"})  # fmt: skip
    return "tinycaltech"


def _fake_caltech(categories: Path) -> Path:
    """An unpacked 101_ObjectCategories/ as the Caltech tar.gz gives it (BACKGROUND_Google is dropped)."""
    for cls in ("BACKGROUND_Google", "ant", "brain"):
        (categories / cls).mkdir(parents=True)
        for i in range(4):
            (categories / cls / f"image_{i + 1:04d}.jpg").write_bytes(bytes([i, len(cls)]))
    return categories


def test_an_unpacked_caltech_folder_below_root_name_is_found_offline_and_linked(tmp_path, tinycaltech):
    mine = _fake_caltech(tmp_path / "tinycaltech" / "caltech-101" / "101_ObjectCategories")
    done = prep.prepare(tinycaltech, tmp_path, download=False, progress=False)
    assert done.counts == {"train": 4, "test": 4} and done.classes == ("ant", "brain")
    place = tmp_path / "tinycaltech" / "caltech101" / "101_ObjectCategories"  # where torchvision looks
    assert place.is_symlink() and os.path.samefile(place, mine)
    image = next((done.folder / "test" / "ant").iterdir())
    assert os.path.samefile(image, mine / "ant" / image.name)  # hard-linked from the user's copy: no bytes copied


def _fake_dtd(folder: Path) -> None:
    """An unpacked dtd/ (dtd-r1.0.1.tar.gz): images/CLASS/*.jpg and labels/{train,val,test}1.txt."""
    for split, names in (("train", ("a", "b")), ("val", ("c", "d")), ("test", ("e", "f"))):
        for cls in ("banded", "woven"):
            for name in names:
                (folder / "images" / cls).mkdir(parents=True, exist_ok=True)
                (folder / "images" / cls / f"{cls}_{name}.jpg").write_bytes(name.encode())
        (folder / "labels").mkdir(exist_ok=True)
        (folder / "labels" / f"{split}1.txt").write_text(
            "".join(f"{cls}/{cls}_{n}.jpg\n" for cls in ("banded", "woven") for n in names))


def test_dtd_unpacked_straight_into_root_name_is_found_though_torchvision_wants_dtd_dtd(tmp_path, cards_dir):
    _card_like(cards_dir, "dtd", "tinydtd", {"train: 1880": "train: 4", "val: 1880": "val: 4",
                                             "test: 1880": "test: 4"})  # fmt: skip
    mine = tmp_path / "tinydtd" / "dtd"  # tar xzf dtd-r1.0.1.tar.gz in ROOT/tinydtd; torchvision reads dtd/dtd/
    _fake_dtd(mine)
    before = _tree(mine / "images")
    done = prep.prepare("tinydtd", tmp_path, download=False, progress=False)
    assert done.counts == {"train": 4, "val": 4, "test": 4} and done.classes == ("banded", "woven")
    assert os.path.samefile(done.folder / "val" / "woven" / "woven_d.jpg", mine / "images" / "woven" / "woven_d.jpg")
    assert _tree(mine / "images") == before


@pytest.fixture
def tinyhymenoptera(cards_dir):
    _card_like(cards_dir, "hymenoptera", "tinyhymenoptera", {"train: 245": "train: 4", "val: 153": "val: 2"})
    return "tinyhymenoptera"


def _fake_hymenoptera(folder: Path) -> Path:
    for split, n in (("train", 2), ("val", 1)):
        for cls in ("ants", "bees"):
            (folder / split / cls).mkdir(parents=True)
            for i in range(n):
                (folder / split / cls / f"{cls}{i}.jpg").write_bytes(b"\xff\xd8" + bytes([i]))
    return folder


def test_hymenoptera_folder_two_levels_down_is_found_offline(tmp_path, tinyhymenoptera):
    mine = _fake_hymenoptera(tmp_path / "tinyhymenoptera" / "downloads" / "hymenoptera_data")
    done = prep.prepare(tinyhymenoptera, tmp_path, download=False, progress=False)
    assert done.counts == {"train": 4, "val": 2} and done.classes == ("ants", "bees")
    assert os.path.samefile(done.folder / "val" / "bees" / "bees0.jpg", mine / "val" / "bees" / "bees0.jpg")


def test_from_links_an_unpacked_folder_elsewhere_without_copying(tmp_path, tinycaltech):
    mine = _fake_caltech(tmp_path / "Downloads" / "101_ObjectCategories")
    before = _tree(mine)
    root = tmp_path / "data"
    result = CliRunner().invoke(app, ["data", "prepare", tinycaltech, "--root", str(root), "--no-download",
                                      "--from", str(mine)])  # fmt: skip
    assert result.exit_code == 0, result.output
    place = root / "tinycaltech" / "caltech101" / "101_ObjectCategories"
    assert place.is_symlink() and os.path.samefile(place, mine)
    done = prep.find_prepared(tinycaltech, root)
    assert done is not None and str(done.folder) in result.output
    image = next((done.folder / "train" / "brain").iterdir())
    assert os.path.samefile(image, mine / "brain" / image.name)
    assert _tree(mine) == before


def test_from_a_folder_holding_mnist_raw_files_and_hymenoptera_data(tmp_path, tinymnist, tinyhymenoptera):
    _tiny_mnist(tmp_path / "elsewhere", name="mine")  # elsewhere/mine/MNIST/raw/*-ubyte
    done = prep.prepare(tinymnist, tmp_path / "data", download=False, source=tmp_path / "elsewhere" / "mine" / "MNIST")
    assert done.counts == {"train": 12, "test": 5}
    raw = tmp_path / "data" / "tinymnist" / "MNIST" / "raw"
    assert os.path.samefile(raw / "t10k-images-idx3-ubyte",
                            tmp_path / "elsewhere" / "mine" / "MNIST" / "raw" / "t10k-images-idx3-ubyte")  # fmt: skip
    _fake_hymenoptera(tmp_path / "elsewhere" / "hymenoptera_data")
    done = prep.prepare(tinyhymenoptera, tmp_path / "data", download=False, source=tmp_path / "elsewhere")
    assert done.counts == {"train": 4, "val": 2}
    assert (tmp_path / "data" / "tinyhymenoptera" / "hymenoptera_data").is_symlink()


def test_an_archive_under_root_name_is_unpacked_offline_and_kept(tmp_path, cards_dir):
    _card_like(cards_dir, "caltech101", "tinycaltech",
               {"train: 3030": "train: 4", "test: 5647": "test: 4", "train_per_class: 30": "train_per_class: 2",
                "md5: 3138e1922a9193bfa496528edbbc45d0": "md5: null"})  # fmt: skip
    _fake_caltech(tmp_path / "build" / "101_ObjectCategories")
    inner = tmp_path / "build" / "caltech-101" / "101_ObjectCategories.tar.gz"
    inner.parent.mkdir()
    with tarfile.open(inner, "w:gz") as tar:
        tar.add(tmp_path / "build" / "101_ObjectCategories", arcname="101_ObjectCategories")
    archive = tmp_path / "tinycaltech" / "caltech-101.zip"  # as downloaded, zip inside-out as CaltechDATA ships it
    archive.parent.mkdir()
    with zipfile.ZipFile(archive, "w") as z:
        z.write(inner, "caltech-101/101_ObjectCategories.tar.gz")
    done = prep.prepare("tinycaltech", tmp_path, download=False, progress=False)
    assert done.counts == {"train": 4, "test": 4}
    assert (tmp_path / "tinycaltech" / "caltech101" / "101_ObjectCategories" / "ant" / "image_0001.jpg").is_file()
    assert archive.is_file() and not (tmp_path / "tinycaltech" / "caltech101" / "caltech-101").exists()


def test_missing_copy_names_the_exact_paths_expected_and_from(tmp_path, tinycaltech, tinyhymenoptera, no_network):
    d = tmp_path / "tinycaltech"
    with pytest.raises(InputError) as exc:
        prep.prepare(tinycaltech, tmp_path, download=False, progress=False)
    message = str(exc.value)
    assert "\n" not in message and message.startswith("tinycaltech is not under")
    assert (f"expected {d}/caltech101/101_ObjectCategories/ (unpacked; holding BACKGROUND_Google/) or "
            f"{d}/caltech101/101_ObjectCategories.tar.gz or {d}/caltech101/caltech-101.zip") in message
    assert "--from PATH" in message and "--no-download was given" in message
    result = CliRunner().invoke(app, ["data", "prepare", tinyhymenoptera, "--root", str(tmp_path), "--no-download"])
    assert isinstance(result.exception, InputError)  # featkit's entry point prints it as one line, exit code 1
    d = tmp_path / "tinyhymenoptera"
    assert f"{d}/hymenoptera_data/ (unpacked; holding train/, val/) or {d}/hymenoptera_data.zip" in str(
        result.exception)
    with pytest.raises(InputError, match=r"--from .*nowhere does not exist"):
        prep.prepare(tinycaltech, tmp_path, download=False, source=tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match=r"--from .*empty holds no tinycaltech data: expected .*101_ObjectCat"):
        prep.prepare(tinycaltech, tmp_path, download=False, source=tmp_path / "empty")
    assert no_network == []


def test_a_failed_prepare_leaves_no_folder_behind(tmp_path, tinycaltech, tinyhymenoptera, no_network):
    root = tmp_path / "data"
    for name, download in ((tinycaltech, False), (tinycaltech, True), (tinyhymenoptera, False),
                           (tinyhymenoptera, True), ("mnist", False)):  # fmt: skip
        with pytest.raises(InputError):
            prep.prepare(name, root, download=download, progress=False)
        assert not root.exists(), (name, _tree(root))
    mine = root / "tinycaltech"  # a folder of the user's, with an unrelated file and an empty folder of theirs
    (mine / "theirs").mkdir(parents=True)
    (mine / "notes.txt").write_text("mine")
    before = _tree(tmp_path)
    with pytest.raises(InputError):
        prep.prepare(tinycaltech, root, download=False, progress=False)
    assert _tree(tmp_path) == before


def test_a_failed_prepare_takes_back_its_links_and_partial_copy_and_deletes_nothing_of_yours(tmp_path, cards_dir):
    _card_like(cards_dir, "caltech101", "tinycaltech",
               {"train: 3030": "train: 4", "test: 5647": "test: 5",  # one more than there is: fails after linking
                "train_per_class: 30": "train_per_class: 2"})  # fmt: skip
    _fake_caltech(tmp_path / "data" / "tinycaltech" / "unpacked" / "101_ObjectCategories")
    _fake_caltech(tmp_path / "Downloads" / "101_ObjectCategories")
    before = _tree(tmp_path)
    for source in (None, tmp_path / "Downloads"):
        with pytest.raises(InputError, match="split 'test' has 4 images, the card expects 5"):
            prep.prepare("tinycaltech", tmp_path / "data", download=False, progress=False, source=source)
        assert _tree(tmp_path) == before


def test_an_images_folder_that_is_not_featkits_is_never_deleted(tmp_path, cards_dir):
    _card_like(cards_dir, "dtd", "tinydtd", {"train: 1880": "train: 4", "val: 1880": "val: 4",
                                             "test: 1880": "test: 4"})  # fmt: skip
    _fake_dtd(tmp_path / "tinydtd")  # DTD's own images/ and labels/ straight in ROOT/NAME, where featkit writes
    before = _tree(tmp_path)
    with pytest.raises(InputError, match=r"tinydtd/images is not an interrupted featkit copy \(it holds banded, "):
        prep.prepare("tinydtd", tmp_path, download=False, progress=False)
    assert _tree(tmp_path) == before


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
