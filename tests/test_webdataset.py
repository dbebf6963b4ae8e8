"""WebDataset tar shards as input: a row per sample with an image, read in place, resumable like files."""

from __future__ import annotations

import io
import json
import logging
import os
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
from helpers import add_member as add
from helpers import store_bytes, write_images, write_shards

import featkit
from featkit.cli.app import main as featkit_main
from featkit.data import shards
from featkit.data.decode import DecodeError, read_image_bytes
from featkit.data.sources import list_inputs

OPTS = dict(model="squeezenet1_1", layers=["fire9"], pool="avg", weights="random", device="cpu", shard_rows=4,
            batch_size=4)


def rows_of(store: Path):
    s = featkit.open_features(store)
    return s.rows, s["fire9"]


def test_a_folder_of_shards_extracts_like_the_same_images_as_files_and_a_rerun_computes_nothing(tmp_path, caplog):
    images = write_images(tmp_path / "imgs", classes=3, per_class=4)
    samples = write_shards(images, tmp_path / "shards")
    first = featkit.extract(tmp_path / "shards", tmp_path / "s", **OPTS)
    assert "a folder of 3 WebDataset shards; left out 00000.parquet" in caplog.text  # stray files: said, not rows
    assert first.computed == 12 and first.failed == 0
    meta, feats = rows_of(tmp_path / "s")
    # the member name under its shard is the path, in shard order; the label is the sample's .cls
    assert [Path(p).name for p in meta["path"]] == [name for name, _, _ in samples]
    assert [Path(p).parent.name for p in meta["path"]] == [f"0000{i // 5}.tar" for i in range(12)]
    assert list(meta["label"]) == [c for _, _, c in samples]
    # the same pixels as files: the same vectors
    as_files = featkit.embed(sorted(p for p in images.rglob("*.png")), **{k: v for k, v in OPTS.items()
                                                                          if k != "shard_rows"})
    np.testing.assert_array_equal(feats, as_files["fire9"])
    assert read_image_bytes(meta["path"][3]) == samples[3][1]  # a row's path reads back its bytes
    again = featkit.extract(tmp_path / "shards", tmp_path / "s", **OPTS)
    assert again.computed == 0 and again.unchanged == 12


def test_a_shard_rewritten_with_the_same_sizes_and_times_is_noticed_by_its_fingerprint(tmp_path):
    images = write_images(tmp_path / "imgs", classes=1, per_class=4)
    write_shards(images, tmp_path / "shards", per_shard=4)
    featkit.extract(tmp_path / "shards", tmp_path / "s", **OPTS)
    shard = tmp_path / "shards" / "00000.tar"
    st = shard.stat()
    data = bytearray(shard.read_bytes())
    member = shards.read_shard(str(shard)).members["000000002.png"]
    data[member.offset + member.size - 20] ^= 0xFF  # one byte of sample 2's image, same size
    shard.write_bytes(bytes(data))
    os.utime(shard, ns=(st.st_atime_ns, st.st_mtime_ns))
    again = featkit.extract(tmp_path / "shards", tmp_path / "s", **OPTS)
    assert (again.changed, again.unchanged) == (1, 3)


def test_shards_read_by_loader_processes_give_the_store_threads_give(tmp_path):
    images = write_images(tmp_path / "imgs", classes=2, per_class=5)
    write_shards(images, tmp_path / "shards", per_shard=3)
    featkit.extract(tmp_path / "shards", tmp_path / "threads", **OPTS)
    featkit.extract(tmp_path / "shards", tmp_path / "workers", workers=2, **OPTS)  # DataLoader processes
    assert store_bytes(tmp_path / "threads") == store_bytes(tmp_path / "workers")


def test_bad_members_and_broken_shards_are_recorded_and_the_rest_is_read(tmp_path):
    good = write_images(tmp_path / "imgs", classes=1, per_class=3, fmt="jpg")
    jpegs = sorted(good.rglob("*.jpg"))
    folder = tmp_path / "shards"
    folder.mkdir()
    with tarfile.open(folder / "a.tar", "w") as tar:
        add(tar, "s0.jpg", jpegs[0].read_bytes())
        add(tar, "s1.jpg", b"plain text, not a picture")
        add(tar, "s2.jpg", b"")
        add(tar, "s3.json", b'{"label": "no image in this sample"}')
        add(tar, ".hidden.jpg", jpegs[0].read_bytes())
        add(tar, "s4.jpg", jpegs[1].read_bytes())
    whole = (folder / "a.tar").read_bytes()
    with tarfile.open(folder / "b.tar", "w") as tar:
        add(tar, "t0.png", (good / "c0" / "000.jpg").read_bytes())
        add(tar, "t1.jpg", jpegs[2].read_bytes() * 40)
    cut = (folder / "b.tar").read_bytes()
    (folder / "b.tar").write_bytes(cut[:len(cut) // 2])  # a copy killed half-way: t1 is cut off
    (folder / "c.tar").write_bytes(b"this is not a tar archive" * 40)
    result = featkit.extract(folder, tmp_path / "s", **OPTS)
    store = featkit.open_features(tmp_path / "s")
    assert [Path(p).name for p in store.rows["path"]] == ["s0.jpg", "s4.jpg", "t0.png"]
    failures = {Path(p).name: reason for p, reason in zip(store.failures["path"], store.failures["reason"],
                                                         strict=True)}
    assert failures["s1.jpg"] == "not_an_image" and failures["s2.jpg"] == "empty"
    assert failures["c.tar"] == "not_an_image"
    assert failures["t1.jpg"] == "truncated" and failures["b.tar"] == "corrupt"  # the samples before the cut are rows
    assert result.failed == len(store.failures)
    assert whole == (folder / "a.tar").read_bytes()  # read, never written


def test_labels_and_splits_from_json_and_split_folders_and_long_member_names(tmp_path):
    png = write_images(tmp_path / "imgs", classes=1, per_class=1)
    data = next(png.rglob("*.png")).read_bytes()
    long_name = "deep/" + "n" * 150 + "/k1.png"  # past ustar's 100 characters: a GNU or PAX header
    for split in ("train", "val"):
        (tmp_path / "ds" / split).mkdir(parents=True)
        with tarfile.open(tmp_path / "ds" / split / "000.tar", "w", format=tarfile.PAX_FORMAT) as tar:
            add(tar, "k0.png", data)
            add(tar, "k0.json", json.dumps({"Label": "bee", "caption": "x"}).encode())
            add(tar, long_name, data)
            add(tar, long_name.replace(".png", ".json"), json.dumps({"class": 7, "split": "test"}).encode())
    table = list_inputs(tmp_path / "ds").table
    assert list(table["label"]) == ["bee", "7", "bee", "7"]
    assert list(table["split"]) == ["train", "test", "val", "test"]  # the sample's own split wins
    assert table["path"][1].endswith("train/000.tar/" + long_name)
    assert read_image_bytes(table["path"][1]) == data


def test_a_member_path_reads_like_a_file_and_says_why_when_it_cannot(tmp_path):
    png = next(write_images(tmp_path / "imgs", classes=1, per_class=1).rglob("*.png")).read_bytes()
    shard = tmp_path / "x.tar"
    with tarfile.open(shard, "w") as tar:
        add(tar, "a.png", png)
    one = featkit.embed(f"{shard}/a.png", **{k: v for k, v in OPTS.items() if k != "shard_rows"})
    assert one["fire9"].shape == (1, 512)
    with pytest.raises(DecodeError, match="no such member in x.tar") as err:
        read_image_bytes(f"{shard}/b.png")
    assert err.value.reason == "not_found"
    with pytest.raises(DecodeError) as err:  # the shard is a file: no path walks out of it
        read_image_bytes(f"{shard}/../../../etc/passwd")
    assert err.value.reason == "not_found"
    # a folder named like a shard is a folder
    (tmp_path / "photos.tar").mkdir()
    (tmp_path / "photos.tar" / "a.png").write_bytes(png)
    assert shards.split_member(tmp_path / "photos.tar" / "a.png") is None
    assert read_image_bytes(tmp_path / "photos.tar" / "a.png") == png


def test_a_compressed_shard_is_one_line_that_says_what_to_do(tmp_path, monkeypatch, capsys):
    with tarfile.open(tmp_path / "x.tar.gz", "w:gz") as tar:
        add(tar, "a.png", b"png")
    monkeypatch.setattr(sys, "argv", ["featkit", "extract", "--model", "squeezenet1_1", "--weights", "random",
                                      str(tmp_path / "x.tar.gz"), "-o", str(tmp_path / "s")])
    monkeypatch.setenv("FEATKIT_DEBUG", "0")
    monkeypatch.setattr(logging.getLogger(), "handlers", [])  # the CLI's handler writes to this test's stderr only
    with pytest.raises(SystemExit) as exited:
        featkit_main()
    err = capsys.readouterr().err.strip()
    assert exited.value.code == 1 and len(err.splitlines()) == 1, err
    assert "compressed tar" in err and "decompress it first" in err


def test_shards_written_by_webdataset_read_back_the_samples_webdataset_reads(tmp_path):
    wds = pytest.importorskip("webdataset", reason="the webdataset package (in featkit[dev]) writes the shard")
    images = write_images(tmp_path / "imgs", classes=2, per_class=3, fmt="jpg")
    files = sorted(images.rglob("*.jpg"))
    with wds.TarWriter(str(tmp_path / "w.tar")) as sink:
        for i, path in enumerate(files):
            sink.write({"__key__": f"sample{i:03d}", "jpg": path.read_bytes(), "cls": int(path.parent.name[1:]),
                        "json": {"caption": path.name}})
    read = wds.WebDataset(str(tmp_path / "w.tar"), shardshuffle=False)
    theirs = [(s["__key__"], s["jpg"], int(s["cls"])) for s in read]
    table = list_inputs(tmp_path / "w.tar").table
    assert [Path(p).stem for p in table["path"]] == [key for key, _, _ in theirs]
    assert [read_image_bytes(p) for p in table["path"]] == [data for _, data, _ in theirs]
    assert list(table["label"]) == [str(c) for _, _, c in theirs]


def test_member_names_that_climb_out_are_recorded_and_never_read(tmp_path):
    png = next(write_images(tmp_path / "imgs", classes=1, per_class=1).rglob("*.png")).read_bytes()
    shard = tmp_path / "x.tar"
    with tarfile.open(shard, "w") as tar:
        add(tar, "ok.png", png)
        add(tar, "../../escape.png", png)
        add(tar, "/etc/abs.png", png)
    listing = list_inputs(shard)
    assert [Path(p).name for p in listing.table["path"]] == ["ok.png"]
    assert list(listing.bad_names["reason"]) == ["bad_filename", "bad_filename"]
    assert "climbs out" in listing.bad_names["message"][0]


def test_fingerprints_of_members_and_files_mixed_keep_their_order_and_match_one_by_one(tmp_path, monkeypatch):
    from featkit.extraction.fingerprint import fingerprint, fingerprints

    images = write_images(tmp_path / "imgs", classes=3, per_class=30)
    write_shards(images, tmp_path / "shards", per_shard=20)
    members = list(list_inputs(tmp_path / "shards").table["path"])
    files = sorted(str(p) for p in images.rglob("*.png"))
    mixed = members[:50] + files[:40] + members[50:] + [str(tmp_path / "gone.png"), f"{members[0][:-4]}.nope"]
    monkeypatch.setattr(shards, "_cache", type(shards._cache)())  # every shard's headers read afresh
    monkeypatch.setattr(shards, "_cached_members", 0)
    together = fingerprints(mixed)
    assert together == [fingerprint(p) for p in mixed]
    assert together[-2:] == ["", ""] and all(together[:-2])
    copy = tmp_path / "copy.png"  # a member's print is that of its bytes as a file
    copy.write_bytes(read_image_bytes(members[7]))
    assert together[7] == fingerprint(copy)


def _set_size(archive: bytes, header_at: int, size: int) -> bytes:
    """``archive`` with the size field of the header at ``header_at`` set to ``size`` (base-256 if negative)."""
    field = (b"\xff" + (256**11 + size).to_bytes(11, "big")) if size < 0 else b"\x80" + size.to_bytes(11, "big")
    header = bytearray(archive[header_at:header_at + 512])
    header[124:136] = field
    header[148:156] = b" " * 8
    header[148:156] = f"{sum(header):06o}\0 ".encode()
    return archive[:header_at] + bytes(header) + archive[header_at + 512:]


def test_crafted_headers_end_the_shard_where_they_are_and_keep_the_samples_before(tmp_path, monkeypatch):
    import threading

    png = next(write_images(tmp_path / "imgs", classes=1, per_class=1).rglob("*.png")).read_bytes()
    with tarfile.open(tmp_path / "a.tar", "w", format=tarfile.GNU_FORMAT) as tar:
        add(tar, "a.png", png)
        add(tar, "b.png", png)
        add(tar, "c.png", png)
    whole = (tmp_path / "a.tar").read_bytes()
    second = 512 + -(-len(png) // 512) * 512  # where b.png's header is
    # a negative size sends tarfile back to a header it read: it looped there forever, its memory growing
    (tmp_path / "neg.tar").write_bytes(_set_size(whole, second, -1024))
    found = {}
    thread = threading.Thread(target=lambda: found.update(neg=list_inputs(tmp_path / "neg.tar")), daemon=True)
    thread.start()
    thread.join(30)
    assert not thread.is_alive(), "listing a shard with a negative member size did not end"
    assert [Path(p).name for p in found["neg"].table["path"]] == ["a.png"]
    assert list(found["neg"].bad_names["reason"]) == ["corrupt"]
    # a size past the end of the file: the member is cut off, the shard recorded, a.png read
    (tmp_path / "huge.tar").write_bytes(_set_size(whole, second, 10**12))
    huge = list_inputs(tmp_path / "huge.tar")
    assert Path(huge.table["path"][0]).name == "a.png" and list(huge.bad_names["reason"]) == ["corrupt"]
    # a time no clock reads (a PAX header can say nan): the member is read, its time 0
    with tarfile.open(tmp_path / "nan.tar", "w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("n.png")
        info.size, info.pax_headers = len(png), {"mtime": "nan"}
        tar.addfile(info, io.BytesIO(png))
    nan = list_inputs(tmp_path / "nan.tar").table
    assert list(nan["mtime_ns"]) == [0] and read_image_bytes(nan["path"][0]) == png


def test_tar_made_the_usual_ways_read_every_image(tmp_path, caplog):
    """``tar -C dir .`` (./ names), hard links, a name added again (tar -u), dotted names, a .tar beside images."""
    png = next(write_images(tmp_path / "imgs", classes=1, per_class=1).rglob("*.png")).read_bytes()
    other = next(write_images(tmp_path / "imgs2", classes=1, per_class=1, seed=3).rglob("*.png")).read_bytes()
    with tarfile.open(tmp_path / "x.tar", "w") as tar:
        add(tar, "./a.png", png)
        add(tar, "./sub//b.png", png)
        link = tarfile.TarInfo("./c.png")
        link.type, link.linkname = tarfile.LNKTYPE, "./a.png"
        tar.addfile(link)
        sym = tarfile.TarInfo("d.png")
        sym.type, sym.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(sym)
        add(tar, "e.png", png)
        add(tar, "e.png", other)  # tar -u appends the new copy; tar -x keeps the last
        add(tar, "cat.0.png", png)
        add(tar, "cat.1.png", png)
    listing = list_inputs(tmp_path / "x.tar")
    names = [p.split("x.tar/")[1] for p in listing.table["path"]]
    assert names == ["a.png", "sub/b.png", "c.png", "e.png", "cat.0.png"]
    assert [read_image_bytes(p) for p in listing.table["path"][:4]] == [png, png, png, other]
    assert listing.bad_names[["reason"]].values.ravel().tolist() == ["not_a_file"]  # the symlink, never followed
    assert "1 image member sharing a sample with another image left out" in caplog.text
    # the path as a user would retype it (./ and // gone) reads the same member
    assert read_image_bytes(f"{tmp_path}/x.tar/sub/b.png") == png
    # a .tar among images, or named in a list, is read as a shard, not decoded as one picture
    (tmp_path / "mixed" / "c0").mkdir(parents=True)
    (tmp_path / "mixed" / "c0" / "one.png").write_bytes(png)
    (tmp_path / "mixed" / "c0" / "more.tar").write_bytes((tmp_path / "x.tar").read_bytes())
    mixed = list_inputs(tmp_path / "mixed").table
    assert len(mixed) == 6 and set(mixed["label"]) == {"c0"}  # the class folder labels the shard's samples
    (tmp_path / "list.txt").write_text(f"{tmp_path / 'x.tar'}\n")
    assert list(list_inputs(tmp_path / "list.txt").table["path"]) == list(listing.table["path"])
    (tmp_path / "empty.tar").write_bytes(b"")
    assert list(list_inputs(tmp_path / "empty.tar").bad_names["reason"]) == ["empty"]


def test_a_sparse_member_is_recorded_never_read_as_the_wrong_bytes(tmp_path):
    import shutil
    import subprocess

    if shutil.which("tar") is None:
        pytest.skip("needs GNU tar to write a sparse member")
    (tmp_path / "src").mkdir()
    with open(tmp_path / "src" / "hole.bmp", "wb") as f:  # a hole of 1 MiB, then data
        f.seek(1 << 20)
        f.write(b"BM" + b"\1" * 4096)
    (tmp_path / "src" / "after.txt").write_text("a member after it")
    done = subprocess.run(["tar", "--sparse", "-cf", str(tmp_path / "s.tar"), "-C", str(tmp_path / "src"),
                           "hole.bmp", "after.txt"], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"this tar cannot write sparse members: {done.stderr.decode()[:200]}")
    listing = list_inputs(tmp_path / "s.tar")
    assert listing.bad_names[["reason"]].values.ravel().tolist() == ["unreadable"]
    with pytest.raises(DecodeError, match="sparse member") as err:
        read_image_bytes(f"{tmp_path}/s.tar/hole.bmp")
    assert err.value.reason == "unreadable"


def test_a_shard_cut_on_a_header_or_damaged_mid_way_is_recorded_not_silently_short(tmp_path):
    png = next(write_images(tmp_path / "imgs", classes=1, per_class=1).rglob("*.png")).read_bytes()
    with tarfile.open(tmp_path / "a.tar", "w", format=tarfile.GNU_FORMAT) as tar:
        for name in ("a.png", "b.png", "c.png"):
            add(tar, name, png)
    whole = (tmp_path / "a.tar").read_bytes()
    second = 512 + -(-len(png) // 512) * 512  # where b.png's header is
    (tmp_path / "cut.tar").write_bytes(whole[:second])  # a copy stopped exactly on a header's boundary
    flipped = bytearray(whole)
    flipped[second + 148] ^= 0x01  # b.png's header checksum no longer adds up
    (tmp_path / "flip.tar").write_bytes(bytes(flipped))
    for name in ("cut.tar", "flip.tar"):
        listing = list_inputs(tmp_path / name)
        assert [Path(p).name for p in listing.table["path"]] == ["a.png"], name
        assert list(listing.bad_names["reason"]) == ["corrupt"], name
        assert "no valid header" in listing.bad_names["message"][0]
    assert list_inputs(tmp_path / "a.tar").bad_names.empty  # a whole one ends with its end-of-archive marker


def test_sample_metadata_cannot_stop_a_listing_and_every_left_out_image_is_counted(tmp_path, caplog):
    png = next(write_images(tmp_path / "imgs", classes=1, per_class=1).rglob("*.png")).read_bytes()
    with tarfile.open(tmp_path / "a.tar", "w") as tar:
        add(tar, "k0.png", png)
        add(tar, "k0.json", b"[" * 60_000)  # deeper than json's parser goes
        add(tar, "k1.jpg", png)
        add(tar, "k1.png", png)  # the sample's second image
    table = list_inputs(tmp_path / "a.tar").table
    assert [Path(p).name for p in table["path"]] == ["k0.png", "k1.jpg"] and table["label"].isna().all()
    assert "1 image member sharing a sample with another image left out" in caplog.text


def test_class_folders_of_shards_label_their_samples(tmp_path):
    png = next(write_images(tmp_path / "imgs", classes=1, per_class=1).rglob("*.png")).read_bytes()
    for where in ("cat", "dog", "train/cat", "train/dog"):
        (tmp_path / "ds" / where).mkdir(parents=True, exist_ok=True)
        with tarfile.open(tmp_path / "ds" / where / "0.tar", "w") as tar:
            add(tar, "k.png", png)
    (tmp_path / "ds" / "stats.json").write_text("{}")
    by_class = list_inputs(tmp_path / "ds" / "cat").table  # one shard's folder: no labels
    assert list(by_class["label"]) == [None]
    (tmp_path / "flat").mkdir()
    for where in ("cat", "dog"):
        os.symlink(tmp_path / "ds" / where, tmp_path / "flat" / where)
    assert list(list_inputs(tmp_path / "flat").table["label"]) == ["cat", "dog"]
    split = list_inputs(tmp_path / "ds" / "train").table
    assert list(split["label"]) == ["cat", "dog"]
    nested = list_inputs(tmp_path / "ds", layout="splits").table
    assert list(zip(nested["split"], nested["label"], strict=True)) == [("train", "cat"), ("train", "dog")]
