"""`python -m memoir_cli` is the `memoir` command."""

from .cli import main

main()
