"""The `memoir` command line, one module per command group, in the way of huggingface_hub's CLI.

Each command parses its arguments, calls one library function and renders the result (a rich
table, or JSON with --json). Shared option types are in _options.py, output helpers in _output.py.

Exit codes: 0 success, 1 unexpected failure, 2 bad input (facts file, arguments), 3 pack problem
(missing, corrupt, tampered, made for another model), 4 model problem (cannot load, unsupported),
5 pack busy (--no-wait), 6 Hub problem (not found, no token, offline, network), 7 judge problem
(eval --judge: down, or not a verdict), 130 interrupted.
"""

from __future__ import annotations

from typing import Annotated

import typer

from .._version import __version__
from . import editing, history, hub, inspecting, serving, using
from ._output import out

app = typer.Typer(
    name="memoir",
    help="Keep a language model's knowledge up to date with MEMOIR edit packs.",
    rich_markup_mode="rich",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
for group in (editing, using, serving, inspecting, history, hub):
    for name, command in group.COMMANDS.items():
        app.command(name)(command)


def _version(value: bool) -> None:
    if value:
        out.print(f"memoir {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version.")
    ] = False,
) -> None:
    """Keep a language model's knowledge up to date with MEMOIR edit packs."""


def main() -> None:
    import logging

    import transformers

    # memoir's own notices (a one-time GGUF conversion, say) go to stderr, as progress does.
    notices = logging.StreamHandler()
    notices.setFormatter(logging.Formatter("memoir: %(message)s"))
    logging.getLogger("memoir_cli").addHandler(notices)
    logging.getLogger("memoir_cli").setLevel(logging.INFO)

    # Our own progress bars cover long work; transformers' per-load bars and notices are noise here.
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    app()
