"""Data cards: every bundled card against the schema, the protocol, torchvision and the real data we have."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest
import torchvision

from featkit.datasets import cards
from featkit.errors import InputError, UnknownNameError

REQUIRED = {
    "digits", "hymenoptera", "cifar10", "cifar100", "stl10", "flowers102", "oxford_iiit_pet", "dtd", "food101",
    "caltech101", "fgvc_aircraft", "eurosat", "svhn", "mnist", "fashion_mnist", "imagefolder",
}  # fmt: skip
MEAN_PER_CLASS = {"caltech101", "flowers102", "oxford_iiit_pet", "fgvc_aircraft"}
NO_OFFICIAL_SPLIT = {"caltech101", "eurosat", "digits"}
REPO_CARDS = Path(__file__).resolve().parents[1] / "featkit" / "data_cards"


@pytest.fixture(scope="module")
def all_cards() -> dict[str, cards.DataCard]:
    return {card.name: card for card in cards.list_cards()}


def test_every_card_validates_and_is_named_after_its_file(all_cards):
    files = sorted(p.stem for p in REPO_CARDS.glob("*.md"))
    assert sorted(all_cards) == files  # names unique (dict keys) and equal to the file stems
    for name, card in all_cards.items():
        assert card.path.stem == name
        assert card.body.strip().startswith("#"), name
        assert "featkit" in card.body, f"{name}: the body should say how to use it with featkit"
        assert card.gotchas and card.protocol_notes, name


def test_required_cards_present(all_cards):
    assert set(all_cards) >= REQUIRED, sorted(REQUIRED - set(all_cards))


def test_metrics_follow_the_protocol(all_cards):
    for name, card in all_cards.items():
        assert card.metric == ("mean_per_class" if name in MEAN_PER_CLASS else "top1"), name


def test_counts_are_known_except_for_user_folders(all_cards):
    for name, card in all_cards.items():
        if name == "imagefolder":
            assert card.classes is None and card.splits is None
            continue
        assert card.classes and card.splits, name
        assert card.source and card.citation, name


def test_datasets_without_an_official_split_fix_a_seeded_one(all_cards):
    for name in NO_OFFICIAL_SPLIT:
        protocol = all_cards[name].split_protocol
        assert protocol is not None and isinstance(protocol["seed"], int), name


def test_official_split_names_and_counts(all_cards):
    assert dict(all_cards["oxford_iiit_pet"].splits) == {"trainval": 3680, "test": 3669}
    assert dict(all_cards["flowers102"].splits) == {"train": 1020, "val": 1020, "test": 6149}
    assert dict(all_cards["dtd"].splits) == {"train": 1880, "val": 1880, "test": 1880}
    aircraft = all_cards["fgvc_aircraft"]
    assert aircraft.classes == 100 and aircraft.splits["trainval"] == aircraft.splits["train"] + aircraft.splits["val"]
    assert (aircraft.splits["trainval"], aircraft.splits["test"]) == (6667, 3333)
    caltech = all_cards["caltech101"]
    assert caltech.split_protocol["train_per_class"] * caltech.classes == caltech.splits["train"]


def test_torchvision_classes_exist_and_take_the_card_arguments(all_cards):
    for name, card in all_cards.items():
        loader = card.loader
        if loader.kind != "torchvision":
            assert loader.torchvision_class is None and loader.layout, name
            continue
        cls = getattr(torchvision.datasets, loader.torchvision_class)
        params = inspect.signature(cls).parameters
        assert "root" in params and "download" in params, name
        assert loader.args, name
        for split, kwargs in loader.args.items():
            assert set(kwargs) <= set(params), (name, split, set(kwargs) - set(params))


def test_checksums_are_md5_hex_and_match_torchvision_source(all_cards):
    for name, card in all_cards.items():
        for archive in card.archives:
            assert archive.file and "/" not in archive.file, name
            if archive.md5 is None:
                continue
            assert re.fullmatch(r"[0-9a-f]{32}", archive.md5), (name, archive.file)
            source = inspect.getsource(inspect.getmodule(getattr(torchvision.datasets, card.loader.torchvision_class)))
            assert archive.md5 in source, f"{name}: md5 of {archive.file} is not in torchvision's source"
            assert archive.file in source or (archive.url and archive.url.rsplit("/", 1)[-1] in source), name


def test_digits_counts_match_scikit_learn(all_cards):
    import numpy as np
    from sklearn.datasets import load_digits

    card = all_cards["digits"]
    per_class = np.bincount(load_digits().target)
    assert card.classes == len(per_class) == 10
    assert sum(card.splits.values()) == per_class.sum() == 1797
    assert card.splits["train"] == (per_class // 2).sum()  # the card's floor(n_c / 2) per-class protocol


def test_hymenoptera_counts_match_the_shared_copy(all_cards, hymenoptera):
    card = all_cards["hymenoptera"]
    for split in ("train", "val"):
        classes = sorted(p for p in (hymenoptera / split).iterdir() if p.is_dir())
        assert len(classes) == card.classes
        files = [f for c in classes for f in c.iterdir() if not f.name.startswith(".")]
        assert len(files) == card.splits[split], split


def test_get_card_and_did_you_mean():
    assert cards.get_card("cifar10").loader.torchvision_class == "CIFAR10"
    with pytest.raises(UnknownNameError, match="Unknown dataset 'cifar_10'. Did you mean 'cifar10'"):
        cards.get_card("cifar_10")


def _card_text(name: str = "cifar10") -> str:
    return (REPO_CARDS / f"{name}.md").read_text(encoding="utf-8")


BREAKAGES = [
    ("metric: top1\n", "metric: top5\n", "metric"),
    ("metric: top1\n", "", "metric"),
    ("metric: top1\n", "metric: top1\ncolour: blue\n", "colour"),
    ("classes: 10\n", "classes: ten\n", "classes"),
    ("classes: 10\n", "classes: true\n", "classes"),
    ("  train: 50000\n", "  train: 0\n", "splits.train"),
    ("  test: 10000\n", "  test: 10000.5\n", "splits.test"),
    ("name: cifar10\n", "name: cifar100\n", "name"),
    ("    md5: c58f30108f718f92721af3b95e74349a\n", "    md5: XYZ\n", "archives[0].md5"),
    ("  kind: torchvision\n", "  kind: magic\n", "loader.kind"),
    ("    test: {train: false}\n", "    tst: {train: false}\n", "loader.args.tst"),
    ("gotchas:\n", "gotchas:\n  - 42\n", "gotchas"),
    ("title: CIFAR-10\n", "title: [1, 2]\n", "title"),
]


@pytest.mark.parametrize(("old", "new", "key"), BREAKAGES)
def test_malformed_card_gives_one_line_naming_file_and_key(tmp_path, old, new, key):
    text = _card_text()
    assert old in text
    path = tmp_path / "cifar10.md"
    path.write_text(text.replace(old, new, 1), encoding="utf-8")
    with pytest.raises(InputError) as info:
        cards.load_card(path)
    message = str(info.value)
    assert "\n" not in message
    assert str(path) in message and f"'{key}'" in message, message


def test_broken_front_matter(tmp_path):
    path = tmp_path / "bad.md"
    for text in ("no front matter\n", "---\nname: [unclosed\n---\n", "---\nname: x\n"):
        path.write_text(text, encoding="utf-8")
        with pytest.raises(InputError, match=re.escape(str(path))) as info:
            cards.load_card(path)
        assert "\n" not in str(info.value)


def test_env_var_folder_shadows_bundled_cards(tmp_path, monkeypatch):
    (tmp_path / "cifar10.md").write_text(_card_text().replace("title: CIFAR-10\n", "title: Mine\n"), encoding="utf-8")
    monkeypatch.setenv(cards.ENV_VAR, str(tmp_path))
    assert cards.get_card("cifar10").title == "Mine"
    assert cards.get_card("mnist").title == "MNIST"  # the rest still comes from the repo


def test_cards_are_frozen(all_cards):
    card = all_cards["cifar10"]
    with pytest.raises(AttributeError):
        card.metric = "top5"  # type: ignore[misc]
    with pytest.raises(TypeError):
        card.splits["train"] = 1  # type: ignore[index]
