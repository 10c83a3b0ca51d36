"""Commands that share packs on the Hugging Face Hub: push, pull."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ._options import (
    DEFAULT_BASE_MODEL,
    BaseModel,
    JsonOpt,
    PackFolderArg,
    TokenOpt,
    takes_base_model,
)
from ._output import err, handles_errors, model_loader, print_json, say


@handles_errors
@takes_base_model
def push(
    pack: PackFolderArg,
    repo_id: Annotated[str, typer.Argument(help="Hub model repo, user/name (created if missing).")],
    private: Annotated[bool, typer.Option("--private", help="Create the repo as private.")] = False,
    token: TokenOpt = None,
    message: Annotated[
        str | None, typer.Option("--message", help="Commit message (default: each version's own).")
    ] = None,
    license: Annotated[
        str | None, typer.Option("--license", help="License id for the model card, e.g. apache-2.0.")
    ] = None,
    base: BaseModel = DEFAULT_BASE_MODEL,
    as_json: JsonOpt = False,
) -> None:
    """Push the pack's versions to the Hub: each version a commit tagged vN; only new versions are sent.

    [dim]Example: memoir push my-pack my-user/my-pack --private[/]
    """
    from ..history import versions_from
    from ..hub import push as push_pack

    def said(number: int) -> None:
        if not as_json:
            err.print(f"pushed version {number} as tag v{number}", highlight=False)

    loader = model_loader(base)
    result = push_pack(
        pack, repo_id, lambda start: versions_from(Path(pack), start, loader), private, token, message, license, said
    )
    if as_json:
        print_json(result.to_json())
    elif result.pushed:
        say(f"[green]pushed[/] versions {', '.join(map(str, result.pushed))} of {pack} to {result.url}")
    else:
        say(f"{result.url} already has every version of {pack}")


@handles_errors
def pull(
    ref: Annotated[str, typer.Argument(help="user/pack, user/pack@v3 or user/pack@<commit>.")],
    to: Annotated[
        Path | None,
        typer.Option("--to", help="Copy the pack into this folder (default: keep it in the Hugging Face cache)."),
    ] = None,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Download a pack from the Hub (through the Hugging Face cache) and check it in full.

    Commands that take a pack also take the Hub reference directly; pull ahead of time to work
    offline (HF_HUB_OFFLINE=1), or with --to to get a local copy to add versions to.

    [dim]Example: memoir pull my-user/my-pack@v2 --to my-pack[/]
    """
    from ..hub import pull as pull_pack
    from ..store import load_pack

    folder = pull_pack(ref, to, token)
    pack = load_pack(folder)
    if as_json:
        print_json(
            {
                "ref": ref,
                "path": str(folder),
                "version": pack.version,
                "edits": len(pack.facts),
                "active": int(pack.memory.bank.active.sum()),
            }
        )
    else:
        say(f"[green]pulled[/] {ref} (version {pack.version}, {len(pack.facts)} facts) to {folder}")


COMMANDS = {"push": push, "pull": pull}
