"""featkit serve's API and its door (RELIABILITY rows 21–22), with FastAPI's test client over a small index.

Random weights and generated photos: these tests check what the routes answer and refuse, not what is similar
(tests/test_serve_photos.py does that with the real weights and photos).
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tempfile

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi", reason="featkit serve needs the serve extra: pip install 'featkit[serve]'")

from fastapi.testclient import TestClient  # noqa: E402
from serving import tiny_index  # noqa: E402

from featkit.errors import ParameterError  # noqa: E402
from featkit.index import Index  # noqa: E402
from featkit.serve.app import ServeConfig, create_app  # noqa: E402
from featkit.serve.library import FULL, THUMB, Library  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
BASE = "http://127.0.0.1:8765"


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    path = tiny_index(root)
    return {"root": root, "index": path, "library": Library(Index.open(path), device="cpu")}


@pytest.fixture(scope="module")
def client(built):
    with TestClient(create_app(built["library"], ServeConfig()), base_url=BASE) as c:
        yield c


def jpeg_bytes(size=(64, 48), colour=(200, 30, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="JPEG")
    return buf.getvalue()


def upload(client, data: bytes, k: int = 5, **kwargs):
    return client.post(f"/api/search?k={k}", files={"image": ("query.jpg", data, "image/jpeg")}, **kwargs)


# ---- what the page uses ------------------------------------------------------------------------------------


def test_info_names_the_index_model_weights_tap_and_size(client, built):
    info = client.get("/api/info").json()
    index = built["library"].index
    assert (info["model"], info["tap"], info["weights"], info["pool"]) == ("squeezenet1_1", "fire9", "random(seed=0)",
                                                                           "avg")
    assert info["vectors"] == len(index) == 18 and info["dims"] == 512 and info["metric"] == "cosine"
    assert info["labels"] == {"c0": 6, "c1": 6, "c2": 6}


def test_an_upload_is_embedded_exactly_like_the_library(client, built):
    photo = built["root"] / "photos" / "c1" / "002.jpg"
    answer = upload(client, photo.read_bytes(), k=5).json()
    expected = built["library"].index.search(str(photo), k=5, device="cpu")
    assert [r["id"] for r in answer["results"]] == expected["id"].tolist()
    np.testing.assert_allclose([r["score"] for r in answer["results"]], expected["score"], atol=1e-5)
    first = answer["results"][0]
    assert first["path"] == str(photo) and first["score"] == pytest.approx(1.0, abs=1e-5)
    assert list(first) == ["rank", "id", "path", "score", "label"] and first["label"] == "c1"


def test_search_from_an_item_leaves_the_item_out_and_ranks_like_its_stored_vector(client, built):
    library = built["library"]
    answer = client.get("/api/search?id=4&k=6").json()
    assert answer["query"] == {"id": 4, "path": library.path(4), "label": "c0"}
    scores, ids = library.index.search_vectors(library.vectors([4]), 7)
    expected = [i for i in ids[0].tolist() if i != 4][:6]
    assert [r["id"] for r in answer["results"]] == expected
    assert [r["rank"] for r in answer["results"]] == [1, 2, 3, 4, 5, 6]


def test_k_and_the_label_filter(client):
    only = client.get("/api/search?id=0&k=4&label=c2").json()["results"]
    assert len(only) == 4 and {r["label"] for r in only} == {"c2"}
    every = client.get("/api/search?id=0&k=100").json()["results"]
    assert len(every) == 17  # all but the query itself
    for bad in ("k=0", "k=201", "k=x", "id=-1", "id=x", ""):
        assert client.get(f"/api/search?{bad}&id=0" if bad.startswith("k") else f"/api/search?{bad}").status_code \
            == 422, bad
    assert client.get("/api/search?id=99&k=3").status_code == 404


def test_browse_pages_and_filters_by_label(client):
    first = client.get("/api/items?offset=0&limit=7").json()
    assert first["total"] == 18 and [i["id"] for i in first["items"]] == list(range(7))
    last = client.get("/api/items?offset=14&limit=7").json()
    assert [i["id"] for i in last["items"]] == [14, 15, 16, 17]
    bees = client.get("/api/items?label=c1").json()
    assert bees["total"] == 6 and {i["label"] for i in bees["items"]} == {"c1"}
    assert client.get("/api/items?limit=0").status_code == 422


def test_the_map_places_every_item_coloured_by_label(client):
    answer = client.get("/api/map").json()
    assert answer["labels"] == ["c0", "c1", "c2"]
    assert sorted(p[0] for p in answer["points"]) == list(range(18))
    assert {p[3] for p in answer["points"]} == {0, 1, 2}
    assert np.ptp([p[1] for p in answer["points"]]) > 0


def test_the_page_and_its_assets_are_served_with_a_strict_policy(client):
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "/static/app.js" in page.text and "<script>" not in page.text  # no inline script: CSP forbids it
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "default-src 'none'" in csp and "unsafe" not in csp
    for asset, kind in (("/static/app.js", "text/javascript"), ("/static/app.css", "text/css")):
        answer = client.get(asset)
        assert answer.status_code == 200 and answer.headers["content-type"].startswith(kind)


# ---- pictures ----------------------------------------------------------------------------------------------


def test_thumbnails_and_images_are_reencoded_jpegs_by_id(client, built):
    photo = built["root"] / "photos" / "c0" / "001.jpg"
    for route, limit in (("thumb", THUMB), ("image", FULL)):
        answer = client.get(f"/api/{route}/1")
        assert answer.status_code == 200 and answer.headers["content-type"] == "image/jpeg"
        assert answer.headers["x-content-type-options"] == "nosniff"
        assert answer.content[:3] == b"\xff\xd8\xff" and answer.content != photo.read_bytes()
        assert max(Image.open(io.BytesIO(answer.content)).size) <= limit
    assert client.get("/api/image/18").status_code == 404
    assert client.get("/api/thumb/-1").status_code == 404


@pytest.mark.parametrize("content", [
    b'<svg xmlns="http://www.w3.org/2000/svg" onload="alert(1)"><script>alert(1)</script></svg>',
    b"<!doctype html><html><script>alert(document.cookie)</script></html>",
    b"%PDF-1.4\n1 0 obj<<>>endobj",
])
def test_a_library_file_swapped_for_svg_or_html_is_never_served(built, content, tmp_path):
    root = tmp_path / "lib"
    library = Library(Index.open(tiny_index(root, classes=1, per_class=3)), device="cpu")
    (root / "photos" / "c0" / "000.jpg").write_bytes(content)  # after indexing: the file at id 0 is no image now
    with TestClient(create_app(library, ServeConfig()), base_url=BASE) as client:
        for route in ("image", "thumb"):
            answer = client.get(f"/api/{route}/0")
            assert answer.status_code == 404 and answer.headers["content-type"] == "application/json"
            assert answer.json()["reason"] in ("not_an_image", "format_not_allowed")
            assert b"<svg" not in answer.content and b"<script" not in answer.content and b"%PDF" not in answer.content
            assert str(root) not in answer.text  # the reason names the file, not the server's folders
        assert client.get("/api/thumb/1").status_code == 200


# ---- uploads -----------------------------------------------------------------------------------------------


def bomb_png() -> bytes:
    """A valid 30000 × 30000 PNG header (900 Mpixel) with a tiny body: refused from the header alone."""
    buf = io.BytesIO()
    Image.new("1", (30000, 30000)).save(buf, format="PNG")
    return buf.getvalue()


def test_bad_uploads_get_422_with_the_reason_and_the_server_stays_up(client):
    cases = {
        "not_an_image": b"hello, this is text",
        "format_not_allowed": b'<svg xmlns="http://www.w3.org/2000/svg"></svg>',
        "too_many_pixels": bomb_png(),
        "truncated": jpeg_bytes((400, 300))[:600],
        "empty": b"",
    }
    for reason, data in cases.items():
        answer = upload(client, data)
        assert answer.status_code == 422, (reason, answer.text)
        assert answer.json()["reason"] == reason, answer.json()
        assert client.get("/api/info").status_code == 200
    no_field = client.post("/api/search", files={"photo": ("q.jpg", jpeg_bytes(), "image/jpeg")})
    assert no_field.status_code == 422 and no_field.json()["reason"] == "no_image"
    assert client.post("/api/search", content=jpeg_bytes(), headers={"content-type": "image/jpeg"}).status_code == 415
    assert upload(client, jpeg_bytes()).status_code == 200


def test_an_upload_of_extreme_shape_is_answered_without_a_huge_resize(client):
    # 1 × 60000 pixels pass the decoder's pixel guard; resized to 256 on the short side before the crop they would
    # be 3.9 Gpixels (11 GB): the crop's source region is resized instead
    import resource

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    buf = io.BytesIO()
    Image.new("RGB", (1, 60000), (0, 0, 0)).save(buf, format="PNG")
    answer = upload(client, buf.getvalue())
    assert answer.status_code == 200, answer.text
    grew = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024
    assert grew < 500 * 2**20, grew  # peak memory: not the gigabytes of a full resize
    assert upload(client, jpeg_bytes((2000, 40))).status_code == 200


def test_multipart_abuse_is_a_4xx_answered_off_the_event_loop(client):
    boundary = "B" * 70_000
    answer = client.post("/api/search", content=b"--" + boundary.encode() + b"--\r\n",
                         headers={"content-type": f"multipart/form-data; boundary={boundary}"})
    assert answer.status_code == 400, answer.text
    many = b"--B\r\n\r\n\r\n" * 50_000 + b"--B--\r\n"
    answer = client.post("/api/search", content=many, headers={"content-type": "multipart/form-data; boundary=B"})
    assert answer.status_code == 400 and "parts" in answer.json()["detail"]
    assert client.get("/api/info").status_code == 200


def test_an_upload_over_the_limit_is_refused_with_413(built):
    config = ServeConfig(max_upload=100_000)
    with TestClient(create_app(built["library"], config), base_url=BASE) as client:
        big = jpeg_bytes() + b"\0" * 150_000
        assert upload(client, big).status_code == 413  # Content-Length says so: refused before reading

        def chunks():  # no Content-Length: counted as it arrives
            boundary = b"--b0undary"
            yield boundary + b'\r\nContent-Disposition: form-data; name="image"; filename="q.jpg"\r\n\r\n'
            for _ in range(20):
                yield b"\0" * 10_000
            yield b"\r\n" + boundary + b"--\r\n"

        streamed = client.post("/api/search", content=chunks(),
                               headers={"content-type": "multipart/form-data; boundary=b0undary"})
        assert streamed.status_code == 413
        assert upload(client, jpeg_bytes()).status_code == 200


def test_uploads_are_never_written_to_disk(client, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("an upload went to a temporary file")

    for name in ("SpooledTemporaryFile", "TemporaryFile", "NamedTemporaryFile", "mkstemp"):
        monkeypatch.setattr(tempfile, name, refuse)
    big = np.random.default_rng(0).integers(0, 255, (1500, 2000, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(big).save(buf, format="PNG")  # ~9 MB: past any spooling threshold
    assert len(buf.getvalue()) > 5_000_000
    assert upload(client, buf.getvalue()).status_code == 200


# ---- the door ----------------------------------------------------------------------------------------------


def test_every_answer_has_nosniff_and_the_policy_and_none_allows_other_origins(client):
    for method, url, headers in (("GET", "/api/info", {}), ("GET", "/nowhere", {}), ("GET", "/api/thumb/999", {}),
                                 ("GET", "/api/info", {"host": "evil.example:8765"}),
                                 ("GET", "/api/info", {"origin": BASE}),
                                 ("OPTIONS", "/api/search", {"origin": BASE, "access-control-request-method": "POST"})):
        answer = client.request(method, url, headers=headers)
        assert answer.headers["x-content-type-options"] == "nosniff", url
        assert "default-src 'none'" in answer.headers["content-security-policy"], url
        assert not any(h.startswith("access-control-") for h in answer.headers), (url, answer.headers)


@pytest.mark.parametrize("host", ["evil.example:8765", "evil.example", "127.0.0.1:8766", "localhost:80",
                                  "127.0.0.1.evil.example:8765", "attacker.localhost.example:8765", "", "[::2]:8765",
                                  "10.0.0.5:8765", "127.0.0.1:8765@evil.example", "localhost:8765:1",
                                  "evil.example@127.0.0.1:8765", "127.0.0.1:8765/evil", "127.0.0.1:8765#x",
                                  "user:pw@localhost:8765", "127.0.0.1:08765", " 127.0.0.1:8765", "127.0.0.1:8765?x"])
def test_a_foreign_host_header_is_refused(client, host):
    answer = client.get("/api/info", headers={"host": host})
    assert answer.status_code == 403, host
    assert "model" not in answer.text


@pytest.mark.parametrize("host", ["127.0.0.1:8765", "localhost:8765", "LOCALHOST:8765", "[::1]:8765"])
def test_loopback_names_at_the_servers_port_are_let_in(client, host):
    assert client.get("/api/info", headers={"host": host}).status_code == 200


@pytest.mark.parametrize("origin", ["http://evil.example", "null", "http://127.0.0.1:9999", "https://evil.example",
                                    "http://localhost:8765.evil.example"])
def test_requests_from_other_origins_are_refused(client, origin):
    assert client.get("/api/info", headers={"origin": origin}).status_code == 403
    assert upload(client, jpeg_bytes(), headers={"origin": origin}).status_code == 403


def test_the_servers_own_origin_may_upload(client):
    assert upload(client, jpeg_bytes(), headers={"origin": BASE}).status_code == 200
    # behind a TLS proxy the page's origin is https:// and the same host
    assert upload(client, jpeg_bytes(), headers={"origin": BASE.replace("http:", "https:")}).status_code == 200


def test_only_a_loopback_bind_may_go_without_a_token():
    assert ServeConfig().host == "127.0.0.1"
    for host in ("0.0.0.0", "::", "192.168.1.20", "example.org"):
        with pytest.raises(ParameterError, match="--token"):
            ServeConfig(host=host)
    with pytest.raises(ParameterError, match="letters, digits"):
        ServeConfig(host="0.0.0.0", token="has space;")
    for host in ("127.0.0.1", "::1", "localhost", "127.0.0.2"):
        ServeConfig(host=host)


def test_with_a_token_every_request_needs_it(built):
    token = "s3cret-token_0123456789"
    config = ServeConfig(host="0.0.0.0", token=token)
    with TestClient(create_app(built["library"], config), base_url="http://192.168.1.20:8765",
                    follow_redirects=False) as client:
        assert client.get("/api/info").status_code == 401
        assert client.get("/api/thumb/0").status_code == 401
        assert upload(client, jpeg_bytes()).status_code == 401
        assert client.get("/api/info", headers={"authorization": "Bearer wrong"}).status_code == 401
        assert client.get("/api/info", headers={"authorization": f"Bearer {token}"}).status_code == 200
        opened = client.get(f"/?token={token}")
        assert opened.status_code == 303 and opened.headers["location"] == "/"  # the token leaves the address bar
        cookie = opened.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
        name = cookie.split("=", 1)[0]
        assert name == "featkit_token_8765"  # one cookie per port: two servers on one machine keep theirs
        # other apps on 127.0.0.1 set cookies too, some that Python's cookie parser stops at
        messy = f'prefs={{"theme":"dark"}}; a=b c; featkit_token_9000=other; {name}=wrong; {name}={token}'
        assert client.get("/api/info", headers={"cookie": messy}).status_code == 200
        assert client.get("/api/info", headers={"cookie": f"{name}=wrong"}).status_code == 401
        client.cookies.set(name, token)
        assert client.get("/").status_code == 200 and client.get("/api/info").status_code == 200
        # on a wildcard bind any IP address may be the server's; a DNS name only with --allow-host
        assert client.get("/api/info", headers={"host": "10.1.2.3:8765"}).status_code == 200
        assert client.get("/api/info", headers={"host": "photos.lan:8765"}).status_code == 403
    allowed = ServeConfig(host="0.0.0.0", token=token, allowed_hosts=("photos.lan",))
    with TestClient(create_app(built["library"], allowed), base_url="http://photos.lan:8765") as client:
        assert client.get("/api/info", headers={"authorization": f"Bearer {token}"}).status_code == 200


# ---- path traversal (row 21) -------------------------------------------------------------------------------

SECRET = b"FEATKIT-TRAVERSAL-SECRET-7f3a"


def payloads(secret_abs: str) -> list[str]:
    from urllib.parse import quote

    return [
        "../secret.txt", "..%2fsecret.txt", "%2e%2e%2fsecret.txt", "%2e%2e/secret.txt", "%252e%252e%252fsecret.txt",
        "..%252fsecret.txt", "....//secret.txt", "..\\secret.txt", "..%5csecret.txt", "%c0%ae%c0%ae/secret.txt",
        "..%c0%afsecret.txt", "..;/secret.txt", "0/../../secret.txt", "0/..%2f..%2fsecret.txt",
        "../photos_secret/secret.txt", "..%2fphotos_secret%2fsecret.txt", "../../../../../../etc/passwd",
        "/etc/passwd", "%2fetc%2fpasswd", "//etc/passwd", "file:///etc/passwd", secret_abs, quote(secret_abs, safe=""),
        quote(quote(secret_abs, safe=""), safe=""), "0%00", "0%00.jpg", "%00../secret.txt", "0;/etc/passwd",
        "-1", "1e3", "0x1", "99999999999999999999999", "~/secret.txt", "0?path=../secret.txt", "%20../secret.txt",
        "photos_secret", "..", "%2e%2e", ".",
    ]


ROUTES = ["/api/image/{p}", "/api/thumb/{p}", "/api/search?id={p}", "/api/search?id=0&label={p}",
          "/api/items?label={p}", "/api/items?offset={p}", "/api/info/{p}", "/api/duplicates?path={p}",
          "/api/map?file={p}", "/static/{p}", "/{p}", "/api/image/0/{p}", "/api/thumb/{p}/0"]


def test_no_route_returns_a_byte_from_outside_the_indexed_images(client, built):
    # a sibling whose name extends the library's ("photos" / "photos_secret"), and a file beside the index
    root = built["root"]
    (root / "photos_secret").mkdir(exist_ok=True)
    (root / "photos_secret" / "secret.txt").write_bytes(SECRET)
    (root / "secret.txt").write_bytes(SECRET)
    passwd = open("/etc/passwd", "rb").read()[:32] if sys.platform != "win32" else SECRET  # noqa: SIM115
    sent = 0
    for payload in payloads(str(root / "photos_secret" / "secret.txt")):
        for route in ROUTES:
            url = route.replace("{p}", payload)
            for answer in (client.get(url), client.post(url, files={"image": ("q", SECRET, "image/jpeg")})):
                sent += 1
                assert SECRET not in answer.content and passwd not in answer.content, url
                if answer.headers.get("content-type") == "image/jpeg":  # only indexed photos, re-encoded
                    Image.open(io.BytesIO(answer.content)).verify()
    assert sent >= 30 * len(ROUTES) * 2


def test_raw_request_lines_reach_no_file_either(built):
    """The same payloads as raw bytes on a socket to a real server: no client normalises a path first."""
    import socket

    from serving import running_server

    root = built["root"]
    (root / "photos_secret").mkdir(exist_ok=True)
    (root / "photos_secret" / "secret.txt").write_bytes(SECRET)
    with running_server(built["library"], ServeConfig()) as base:
        port = int(base.rsplit(":", 1)[1])
        for payload in payloads(str(root / "photos_secret" / "secret.txt")) + ["\0", "..\0/secret.txt"]:
            for route in ("/api/image/{p}", "/api/thumb/{p}", "/static/{p}", "/{p}"):
                line = f"GET {route.replace('{p}', payload)} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n" \
                       "Connection: close\r\n\r\n"
                with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
                    conn.sendall(line.encode("utf-8", "surrogateescape"))
                    received = b""
                    while chunk := conn.recv(65536):
                        received += chunk
                assert SECRET not in received, line
                assert received.startswith(b"HTTP/1.1 4") or b"image/jpeg" in received.split(b"\r\n\r\n")[0], line
        with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:  # still up
            conn.sendall(f"GET /api/info HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n".encode())
            assert conn.recv(64).startswith(b"HTTP/1.1 200")


# ---- the command -------------------------------------------------------------------------------------------


def featkit_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "featkit", *args], capture_output=True, text=True, timeout=timeout)


def test_serve_refuses_a_public_bind_without_a_token_in_one_line(built):
    done = featkit_cli("serve", str(built["index"]), "--host", "0.0.0.0")
    assert done.returncode == 1
    assert done.stderr.startswith("error: Serving on 0.0.0.0 lets other machines in: give it a --token")
    assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr


def test_serve_says_in_one_line_when_the_port_is_taken_or_the_index_missing(built, tmp_path):
    import socket

    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        done = featkit_cli("serve", str(built["index"]), "--port", str(port))
    assert done.returncode == 1 and f"Cannot listen on http://127.0.0.1:{port}" in done.stderr
    assert "--port" in done.stderr and len(done.stderr.strip().splitlines()) == 1
    missing = featkit_cli("serve", str(tmp_path / "nothing.index"), "--port", "0")
    assert missing.returncode == 1 and missing.stderr.startswith("error: ") and "Traceback" not in missing.stderr


def test_a_store_gone_since_is_a_clear_409_that_names_no_server_folder(built, tmp_path):
    root = tmp_path / "moved"
    library = Library(Index.open(tiny_index(root, classes=1, per_class=3)), device="cpu")
    (root / "feats").rename(root / "feats-elsewhere")
    with TestClient(create_app(library, ServeConfig()), base_url=BASE) as client:
        for url in ("/api/search?id=0", "/api/map"):
            answer = client.get(url)
            text = answer.text
            assert str(tmp_path) not in text, text
        assert client.get("/api/search?id=0").status_code == 409
        assert client.get("/api/map").json()["points"] == []
        (root / "feats-elsewhere").rename(root / "feats")  # back: the map is made now, not stuck empty
        assert len(client.get("/api/map").json()["points"]) == 3
        assert client.get("/api/search?id=0").status_code == 200
        assert "/" not in client.get("/api/info").json()["index"]  # the index's name, not where it lives


def test_json_answers_are_json(client):
    for url in ("/api/info", "/api/items", "/api/search?id=0", "/api/duplicates", "/api/map", "/api/image/x"):
        json.loads(client.get(url).text)
