"""The web app: a FastAPI application over a :class:`~featkit.serve.library.Library`.

Routes take index ids and numbers only; the page and its script and style are read from the package, never from a
path a request names. Uploads are read into memory up to the size limit, parsed there and never written to disk.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from importlib import resources

from fastapi import FastAPI, Query, Request
from fastapi.responses import JSONResponse, Response
from python_multipart.exceptions import FormParserError, MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect

from featkit.data.decode import DecodeError
from featkit.errors import FeatkitError, ParameterError, check_int
from featkit.serve.guard import Door, DoorMiddleware, is_loopback
from featkit.serve.library import FULL, THUMB, Library, UnknownItem
from featkit.serve.queries import QueryEmbedder, RejectedImage

MAX_K = 200
MAX_PARTS = 16  # multipart parts an upload may have
BODY_TIMEOUT = 30  # seconds an upload may go without sending anything
TOKEN = re.compile(r"[A-Za-z0-9._~-]+")
ASSETS = {"/": ("index.html", "text/html; charset=utf-8"),
          "/static/app.js": ("app.js", "text/javascript; charset=utf-8"),
          "/static/app.css": ("app.css", "text/css; charset=utf-8")}


@dataclass(frozen=True)
class ServeConfig:
    """How the server is reached and what it accepts (built once by ``featkit serve``).

    Attributes:
        host: the address to bind: 127.0.0.1 unless the user asks for another, which then needs ``token``.
        port: the port.
        token: the secret every request must carry, or None.
        allowed_hosts: more names the ``Host`` header may carry.
        max_upload: bytes an upload request may have (413 above).
    """

    host: str = "127.0.0.1"
    port: int = 8765
    token: str | None = None
    allowed_hosts: tuple[str, ...] = ()
    max_upload: int = 20 * 2**20

    def __post_init__(self) -> None:
        if self.token is not None and not TOKEN.fullmatch(self.token):
            raise ParameterError("--token takes letters, digits and - . _ ~ only (it travels in an address and a "
                                 "cookie); e.g. python -c \"import secrets; print(secrets.token_urlsafe())\".")
        if self.token is None and not is_loopback(self.host):
            raise ParameterError(f"Serving on {self.host} lets other machines in: give it a --token (e.g. "
                                 "python -c \"import secrets; print(secrets.token_urlsafe())\"), or leave out "
                                 "--host to serve this machine only.")
        check_int("port", self.port, "featkit serve", minimum=0, error=ParameterError)
        if self.port > 65535:
            raise ParameterError(f"--port {self.port} is not a port (0-65535).")
        check_int("max_upload", self.max_upload, "featkit serve", minimum=1, error=ParameterError)

    @property
    def door(self) -> Door:
        return Door(self.host, self.port, self.token, self.allowed_hosts, self.max_upload)


class BadRequest(Exception):
    def __init__(self, status: int, detail: str, reason: str | None = None):
        super().__init__(detail)
        self.status, self.detail, self.reason = status, detail, reason


def _asset(name: str) -> bytes:
    return resources.files("featkit.serve").joinpath("static", name).read_bytes()


async def _upload(request: Request, limit: int) -> bytes:
    """The ``image`` field of a multipart request, read into memory, at most ``limit`` bytes of body."""
    ctype, params = parse_options_header(request.headers.get("content-type", ""))
    if ctype != b"multipart/form-data" or not params.get(b"boundary"):
        raise BadRequest(415, "Send the image as multipart/form-data, in a field named 'image'.")
    body = bytearray()
    stream = request.stream().__aiter__()  # a body without Content-Length is counted as it comes
    while True:
        try:
            async with asyncio.timeout(BODY_TIMEOUT):  # a client that stops sending frees its request
                chunk = await stream.__anext__()
        except StopAsyncIteration:
            break
        except TimeoutError:
            raise BadRequest(408, f"The upload stalled (nothing for {BODY_TIMEOUT} s).") from None
        except ClientDisconnect:
            raise BadRequest(400, "The client went away during the upload.") from None
        body += chunk
        if len(body) > limit:
            raise BadRequest(413, f"The upload is larger than this server's limit of {limit / 2**20:g} MB.")
    # parsing is pure Python: off the event loop, so a large body of many parts does not hold other requests
    return await asyncio.to_thread(_image_field, bytes(body), params[b"boundary"])


def _image_field(body: bytes, boundary: bytes) -> bytes:
    """The first part named ``image`` of a multipart body (only its data is kept; at most MAX_PARTS parts)."""
    parts = 0
    header = [b"", b""]
    disposition = [b""]
    image: list[bytearray] = []
    current: list[bytearray | None] = [None]

    def on_part_begin() -> None:
        nonlocal parts
        parts += 1
        if parts > MAX_PARTS:
            raise BadRequest(400, f"The upload has more than {MAX_PARTS} parts; send one field named 'image'.")
        disposition[0] = b""

    def on_header_field(data: bytes, start: int, end: int) -> None:
        header[0] += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        header[1] += data[start:end]

    def on_header_end() -> None:
        if header[0].lower() == b"content-disposition":
            disposition[0] = header[1]
        header[0], header[1] = b"", b""

    def on_headers_finished() -> None:
        wanted = not image and parse_options_header(disposition[0])[1].get(b"name") == b"image"
        current[0] = bytearray() if wanted else None
        if wanted:
            image.append(current[0])  # type: ignore[arg-type]

    def on_part_data(data: bytes, start: int, end: int) -> None:
        if current[0] is not None:
            current[0].extend(data[start:end])

    try:
        parser = MultipartParser(boundary, {
            "on_part_begin": on_part_begin, "on_header_field": on_header_field, "on_header_value": on_header_value,
            "on_header_end": on_header_end, "on_headers_finished": on_headers_finished,
            "on_part_data": on_part_data})
        parser.write(body)
        parser.finalize()
    except (MultipartParseError, FormParserError, ValueError):
        raise BadRequest(400, "The multipart body cannot be parsed.") from None
    if not image:
        raise BadRequest(422, "No 'image' field in the upload.", "no_image")
    return bytes(image[0])


def create_app(library: Library, config: ServeConfig = ServeConfig()) -> DoorMiddleware:  # noqa: B008 - frozen
    """The ASGI application serving ``library`` as ``config`` says (``featkit serve`` runs it with uvicorn).

    The FastAPI app is its ``.app``, behind the :class:`~featkit.serve.guard.DoorMiddleware`.
    """
    queries = QueryEmbedder(library.embedder, library.index.tap)
    app = FastAPI(title="featkit", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.library, app.state.queries = library, queries
    app.router.add_event_handler("shutdown", queries.close)

    @app.exception_handler(BadRequest)
    async def bad_request(_: Request, exc: BadRequest) -> JSONResponse:
        return JSONResponse({"detail": exc.detail, "reason": exc.reason}, status_code=exc.status)

    @app.exception_handler(UnknownItem)
    async def unknown(_: Request, exc: UnknownItem) -> JSONResponse:
        return JSONResponse({"detail": str(exc), "reason": "unknown_id"}, status_code=404)

    @app.exception_handler(DecodeError)
    async def undecodable(_: Request, exc: DecodeError) -> JSONResponse:
        # the file behind an id is no longer an image featkit reads: say why, send none of its bytes
        return JSONResponse({"detail": f"This item's file cannot be shown: {exc.reason} ({_basename(exc.message)}).",
                             "reason": exc.reason}, status_code=404)

    @app.exception_handler(FeatkitError)
    async def featkit_error(_: Request, exc: FeatkitError) -> JSONResponse:
        return JSONResponse({"detail": str(exc), "reason": "unavailable"}, status_code=409)

    for route, (name, media) in ASSETS.items():
        content = _asset(name)

        def serve_asset(content: bytes = content, media: str = media) -> Response:
            return Response(content, media_type=media, headers={"cache-control": "no-cache"})

        app.add_api_route(route, serve_asset, methods=["GET"], include_in_schema=False)

    @app.get("/api/info")
    def info() -> dict:
        return library.info()

    @app.get("/api/items")
    def items(offset: int = Query(0, ge=0), limit: int = Query(60, ge=1, le=500),  # noqa: B008
              label: str | None = None) -> dict:
        return library.items(offset, limit, label)

    @app.get("/api/duplicates")
    async def duplicates() -> dict:
        groups = await asyncio.to_thread(library.duplicates)
        return {"threshold": library.dedup_threshold, "groups": groups}

    @app.get("/api/map")
    async def embedding_map() -> dict:
        return await asyncio.to_thread(library.embedding_map)

    @app.get("/api/search")
    async def search_item(id: int = Query(..., ge=0), k: int = Query(10, ge=1, le=MAX_K),  # noqa: A002,B008
                          label: str | None = None) -> dict:
        query = library.record(id)
        vector = await asyncio.to_thread(library.vectors, [id])
        results = await asyncio.to_thread(library.neighbours, vector, k, label=label, exclude=id)
        return {"query": query, "results": results}

    @app.post("/api/search")
    async def search_upload(request: Request, k: int = Query(10, ge=1, le=MAX_K),  # noqa: B008
                            label: str | None = None) -> dict:
        data = await _upload(request, config.max_upload)
        try:
            vector = await asyncio.wrap_future(queries.submit(data))
        except RejectedImage as exc:
            raise BadRequest(422, f"The upload is not an image featkit can read: {exc.reason} "
                                  f"({_basename(exc.message)}).", exc.reason) from None
        results = await asyncio.to_thread(library.neighbours, vector[None, :], k, label=label)
        return {"query": None, "results": results}

    @app.get("/api/image/{item_id}")
    async def image(item_id: int) -> Response:
        return _jpeg_response(await asyncio.to_thread(library.picture, item_id, FULL))

    @app.get("/api/thumb/{item_id}")
    async def thumb(item_id: int) -> Response:
        return _jpeg_response(await asyncio.to_thread(library.picture, item_id, THUMB))

    return DoorMiddleware(app, config.door)


def _jpeg_response(data: bytes) -> Response:
    return Response(data, media_type="image/jpeg", headers={"cache-control": "private, max-age=3600"})


def _basename(message: str) -> str:
    """A decoder message without the directories of the path it names (a page need not learn the server's tree)."""
    return re.sub(r"(?:[A-Za-z]:)?(?:[\\/][^\\/\s:]+)+[\\/]", "", message)
