"""The ``featkit search --html`` page and the search table, on tiny generated images with random weights: the
header, links and hover paths, word-boundary captions, the different-label marker, skipped queries, escaping."""

from __future__ import annotations

import os
import shutil
from html.parser import HTMLParser
from urllib.parse import unquote, urlparse

import pandas as pd
import pytest
from helpers import write_images
from typer.testing import CliRunner

import featkit
from featkit.cli.app import app
from featkit.index import Index

runner = CliRunner()
LONG = "Leopard_sitting-on.a_branch_at_dusk_0001.png"
ODD = "a<b>&'.png"  # must come back from the parsed page exactly, and never appear raw in it
VOID = {"img", "wbr", "br", "meta", "hr", "input", "link"}


class Node:
    def __init__(self, tag: str, attrs: dict[str, str | None], parent: Node | None):
        self.tag, self.attrs, self.parent, self.children = tag, attrs, parent, []  # type: list

    @property
    def classes(self) -> set[str]:
        return set((self.attrs.get("class") or "").split())

    def text(self) -> str:
        return "".join(c if isinstance(c, str) else c.text() for c in self.children)

    def find_all(self, tag: str | None = None, cls: str | None = None) -> list[Node]:
        found = []
        for c in self.children:
            if isinstance(c, Node):
                if (tag is None or c.tag == tag) and (cls is None or cls in c.classes):
                    found.append(c)
                found += c.find_all(tag, cls)
        return found


class TreeBuilder(HTMLParser):
    """A minimal DOM from the standard library's parser (the page is well-formed: every element is closed)."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.root = self.node = Node("#root", {}, None)

    def handle_starttag(self, tag, attrs):
        node = Node(tag, dict(attrs), self.node)
        self.node.children.append(node)
        if tag not in VOID:
            self.node = node

    def handle_endtag(self, tag):
        if tag in VOID:
            return
        assert self.node.tag == tag, f"</{tag}> closes <{self.node.tag}>"
        self.node = self.node.parent

    def handle_data(self, data):
        self.node.children.append(data)


def parse(page: str) -> Node:
    builder = TreeBuilder()
    builder.feed(page)
    builder.close()
    return builder.root


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    """An index of c0/*.png and c1/*.png (4 each), searched with k=8 (every indexed image) by four queries and a
    broken file: an indexed c0 image, a c0 image copied under a c1 folder with a long name, one in an unlabelled
    folder with a name that needs escaping, and a file that is not an image."""
    root = tmp_path_factory.mktemp("search_page")
    photos = write_images(root / "photos", classes=2, per_class=4, size=(64, 48))
    featkit.extract(photos, root / "feats", model="squeezenet1_1", weights="random", device="cpu", workers=0)
    Index.build(root / "feats").save(root / "photos.index")
    queries = root / "queries"
    (queries / "c1").mkdir(parents=True)
    (queries / "misc").mkdir()
    shutil.copy(photos / "c0" / "000.png", queries / "c1" / LONG)
    shutil.copy(photos / "c1" / "001.png", queries / "misc" / ODD)
    (queries / "misc" / "notes.png").write_text("not an image")
    indexed = str(photos / "c0" / "002.png")
    result = runner.invoke(app, ["search", str(root / "photos.index"), str(queries), indexed, "-k", "8",
                                 "--html", str(root / "page.html"), "--csv", str(root / "out.csv")],
                           catch_exceptions=False)
    assert result.exit_code == 0, result.output
    page = (root / "page.html").read_text()
    return {"root": root, "page": page, "dom": parse(page), "csv": pd.read_csv(root / "out.csv"),
            "index": Index.open(root / "photos.index"), "queries": queries, "indexed": indexed, "photos": photos}


def sections(searched) -> dict[str, Node]:
    """Each query's section, by the query's full path (its figure's title)."""
    out = {}
    for section in searched["dom"].find_all("section", "query"):
        query = section.find_all("figure", "q")[0]
        out[query.find_all("a")[0].attrs["title"]] = section
    return out


def test_header_names_the_model_weights_tap_and_size(searched):
    index = searched["index"]
    fields = {dd.attrs["data-field"]: dd.text() for dd in searched["dom"].find_all("dd")}
    assert fields["model"] == "squeezenet1_1"
    assert fields["weights"] == index.settings.weights.id and fields["weights"].startswith("random(seed=")
    assert fields["tap"].startswith(index.tap)
    dim = index.manifest["dim"]
    assert fields["size"] == f"8 vectors × {dim:,} dims, flat ({index.manifest['factory']}), cosine"
    assert fields["queries"] == "3 searched, 1 skipped, 8 neighbours each"
    assert fields["index"] == str(searched["root"] / "photos.index")


def test_every_thumbnail_is_embedded_and_links_to_its_image_with_the_full_path_on_hover(searched):
    figures = searched["dom"].find_all("figure")
    assert len(figures) == 3 + 3 * 8
    for figure in figures:
        link = figure.find_all("a")[0]
        path = link.attrs["title"]
        assert os.path.isabs(path) and os.path.isfile(path), path
        href = urlparse(link.attrs["href"])
        assert href.scheme == "file" and unquote(href.path) == path
        assert link.find_all("img")[0].attrs["src"].startswith("data:image/jpeg;base64,")  # self-contained
        assert figure.find_all("div", "name")[0].attrs["title"] == path
    titles = [f.find_all("a")[0].attrs["title"] for f in figures if "q" not in f.classes]
    assert sorted(titles) == sorted(searched["csv"]["path"])  # neighbours, as the CSV lists them


def test_captions_show_the_file_name_with_break_opportunities_at_separators(searched):
    long_path = str(searched["queries"] / "c1" / LONG)
    figure = sections(searched)[long_path].find_all("figure", "q")[0]
    name = figure.find_all("div", "name")[0]
    assert name.text() == LONG  # the name, not the path
    assert "Leopard_<wbr>sitting-<wbr>on<wbr>.a_<wbr>branch_<wbr>at_<wbr>dusk_<wbr>0001.png" in searched["page"]
    assert "break-all" not in searched["page"]  # the old rule broke every name mid-word


def test_neighbours_with_another_label_than_the_query_are_marked_in_text(searched):
    by_query = sections(searched)
    labelled = {str(searched["queries"] / "c1" / LONG): "c1", searched["indexed"]: "c0"}  # folder; indexed
    for query, label in labelled.items():
        section = by_query[query]
        hits = [f for f in section.find_all("figure") if "q" not in f.classes]
        for hit in hits:
            other = hit.find_all("div", "label")[0].text() != label
            assert ("differs" in hit.classes) == other
            assert ("≠ other label" in hit.text()) == other  # a visible word, not colour alone
        assert sum("differs" in hit.classes for hit in hits) == 4  # the other class's four images
        assert f"Query label {label}: 4 of 8 neighbours have another label" in section.text()
    unknown = by_query[str(searched["queries"] / "misc" / ODD)]
    assert not unknown.find_all(cls="differs") and "≠" not in unknown.text()
    assert "label is not known" in unknown.text()


def test_skipped_queries_are_listed_with_their_reason(searched):
    skipped = searched["dom"].find_all("section")[0]
    assert skipped.attrs["id"] == "skipped" and "Skipped queries (1)" in skipped.text()
    rows = skipped.find_all("tr")[1:]
    assert len(rows) == 1
    path, reason, message = (td.text() for td in rows[0].find_all("td"))
    assert path == str(searched["queries"] / "misc" / "notes.png") and reason == "not_an_image"
    assert "not an image" in message


def test_user_controlled_text_is_escaped(searched):
    odd = str(searched["queries"] / "misc" / ODD)
    assert odd in sections(searched)  # parsed back exactly from the title attribute
    assert "a<b>" not in searched["page"] and "a&lt;b&gt;&amp;&#x27;.png" in searched["page"]
    assert "a%3Cb%3E%26%27.png" in searched["page"]  # the link's URL is percent-encoded


def test_query_labels_come_from_the_index_or_a_labelled_folder():
    from featkit.reports.search_page import query_labels

    indexed = pd.DataFrame({"path": ["/d/ants/1.jpg", "/d/bees/2.jpg", "/d/x/3.jpg"], "label": ["ants", "bees", None]})
    labels = query_labels(["/d/ants/1.jpg", "/q/bees/9.jpg", "/q/misc/9.jpg", "/d/x/3.jpg", "/q/x/4.jpg", 0],
                          indexed)
    assert labels == {"/d/ants/1.jpg": "ants", "/q/bees/9.jpg": "bees"}


def test_the_table_shows_each_query_once_above_its_neighbours(searched):
    result = runner.invoke(app, ["search", str(searched["root"] / "photos.index"), str(searched["queries"]),
                                 "-k", "3"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    for query in (str(searched["queries"] / "c1" / LONG), str(searched["queries"] / "misc" / ODD)):
        assert result.stdout.count(query) == 1, result.stdout
        at = next(i for i, line in enumerate(lines) if query in line)
        assert [line.split("│")[1].strip() for line in lines[at:at + 4]] == ["query", "1", "2", "3"]
    assert sum(str(searched["photos"]) in line for line in lines) == 2 * 3  # the neighbours, once each
