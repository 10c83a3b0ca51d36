"""The command that serves packs over HTTP: serve (an OpenAI-compatible API, serving/)."""

from __future__ import annotations

from typing import Annotated

import typer

from ..errors import BadInputError
from ..release import AfterTarget
from ._options import DEFAULT_BASE_MODEL, AfterTargetOpt, BaseModel, PacksArg, TokenOpt, takes_base_model
from ._output import err, handles_errors


@handles_errors
@takes_base_model
def serve(
    packs: PacksArg,
    base: BaseModel = DEFAULT_BASE_MODEL,
    host: Annotated[str, typer.Option(help="Address to listen on (loopback unless you say otherwise).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port to listen on (0: any free port).")] = 8000,
    api_key: Annotated[
        str | None,
        typer.Option(
            envvar="MEMOIR_API_KEY",
            help="Require 'Authorization: Bearer KEY' on every endpoint but /health; enables load_pack/unload_pack.",
        ),
    ] = None,
    max_batch: Annotated[int, typer.Option(min=1, help="Rows generated together at most.")] = 8,
    max_queue: Annotated[int, typer.Option(min=1, help="Rows waiting at most; beyond, 429.")] = 64,
    max_tokens: Annotated[
        int, typer.Option(min=1, help="New tokens of a chat request that does not say (max_tokens).")
    ] = 256,
    reload_interval: Annotated[
        float, typer.Option(min=0.1, help="Seconds between looks for new versions of local packs.")
    ] = 1.0,
    poll_hub: Annotated[
        float | None,
        typer.Option(min=1.0, help="Seconds between looks for new versions of Hub packs (default: never)."),
    ] = None,
    drain_timeout: Annotated[
        float, typer.Option(min=0.0, help="On SIGTERM, seconds to let requests in flight finish.")
    ] = 30.0,
    after_target: AfterTargetOpt = AfterTarget.auto,
    token: TokenOpt = None,
) -> None:
    """Serve the packs on the base model through an OpenAI-compatible API, reloading new versions.

    The `model` field picks `memoir` (every pack stacked, the default), one pack by name, or the
    base model's id (GET /v1/models lists them).

    [dim]Example: memoir serve my-pack --port 8000, then point an OpenAI client at http://127.0.0.1:8000/v1[/]
    """
    try:
        from ..serving.app import Limits
        from ..serving.server import MemoirServer, ServeOptions
        from ..session import open_packs
    except ImportError as error:
        raise BadInputError(
            f'memoir serve needs its extra libraries: pip install "memoir-cli[serve]" ({error})'
        ) from None

    options = ServeOptions(
        host=host,
        port=port,
        api_key=api_key or None,
        max_batch=max_batch,
        max_queue=max_queue,
        limits=Limits(default_max_tokens=max_tokens),
        reload_interval=reload_interval,
        poll_hub=poll_hub,
        drain_timeout=drain_timeout,
        after_target=after_target.value,
        token=token,
    )
    try:
        server = MemoirServer(
            packs, open_packs(packs, base.model, base.device, base.dtype, token, base.device_map), options
        )
    except OSError as error:
        raise BadInputError(f"cannot listen on {host}:{port} ({error.strerror or error})", option="port") from None
    served = ", ".join(f"{name}@{version}" for name, version in server.engine.lineup.versions().items())
    where = f"{server.loaded.model_id} at {server.url}/v1"
    err.print(f"memoir: serving {served} on {where}", highlight=False, soft_wrap=True)
    server.run()


COMMANDS = {"serve": serve}
