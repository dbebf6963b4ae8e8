"""``featkit serve``: the local web app for similar-image search over an index."""

from __future__ import annotations

from typing import Annotated

import typer

from featkit.cli._console import console as make_console
from featkit.cli._options import DeviceOpt
from featkit.cli.index import IndexArg, StoreWeightsOpt


def serve(
    index_path: IndexArg,
    host: Annotated[str, typer.Option(
        help="Address to listen on. Only this machine can connect to the default; any other needs --token.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on (0: any free one).", min=0, max=65535)] = 8765,
    token: Annotated[str | None, typer.Option(
        envvar="FEATKIT_SERVE_TOKEN",
        help="A secret every request must carry (open the printed address once; scripts send Authorization: "
             "Bearer TOKEN). Required with a --host other than loopback.")] = None,
    allow_host: Annotated[list[str] | None, typer.Option(
        "--allow-host", help="Another name this server may be called by (its DNS name, a proxy's); repeatable.")
    ] = None,
    max_upload: Annotated[float, typer.Option(
        "--max-upload", min=0.001, help="Largest upload accepted, in MB (larger: 413).")] = 20.0,
    weights: StoreWeightsOpt = None,
    device: DeviceOpt = "auto",
    threshold: Annotated[float, typer.Option(
        help="Cosine similarity at or above which the near-duplicates page groups images (featkit dedup's).",
        min=-1.0, max=1.0)] = 0.92,
) -> None:
    """Search an index by image in the browser: upload or click a photo, browse, near-duplicates, a 2-D map.

    Example: featkit serve photos.index   (then open http://127.0.0.1:8765)
    """
    from featkit.errors import FeatkitError

    try:
        import fastapi  # noqa: F401
        import python_multipart  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as exc:
        raise FeatkitError(f"featkit serve needs FastAPI and uvicorn ({exc.name} is missing): "
                           "pip install 'featkit[serve]'.") from None
    from featkit.serve.app import ServeConfig
    from featkit.serve.library import open_library
    from featkit.serve.server import address, bind
    from featkit.serve.server import serve as run

    config = ServeConfig(host=host, port=port, token=token, allowed_hosts=tuple(allow_host or ()),
                         max_upload=int(max_upload * 2**20))
    sock = bind(config)  # before the model loads: a taken port fails at once
    err = make_console(stderr=True)
    try:
        library = open_library(index_path, weights=weights, device=device, dedup_threshold=threshold)
        info = library.info()
        url = address(host, sock.getsockname()[1])
        err.print(f"featkit serve: {info['vectors']:,} images, {info['model']} {info['tap']} "
                  f"({info['weights']}), queries on {info['device']}")
        err.print(f"open {url}/" + (f"?token={token}" if token else "") + "   (Ctrl-C stops it)", soft_wrap=True)
        if token is not None and len(token) < 16:
            err.print("warning: a token shorter than 16 characters can be guessed; "
                      "python -c \"import secrets; print(secrets.token_urlsafe())\" makes a good one")
        run(library, config, sock)
    finally:
        sock.close()
