"""memoir: lifelong model editing with a sparse residual memory (MEMOIR), managed like a patch set.

Python API for people who generate with their own code:

    pack = memoir_cli.load_pack("my-pack")       # or "my-pack@3": version 3, if its files are kept
    pack = memoir_cli.open_pack("user/pack@v3")  # also Hub repos, and versions rebuilt by replay
    memoir_cli.attach(model, pack)      # model now answers with the pack's edits
    memoir_cli.detach(model)            # the original modules are back, exactly
"""

from ._version import __version__
from .history import open_pack
from .memory import attach, detach
from .store import load_pack

__all__ = ["__version__", "attach", "detach", "load_pack", "open_pack"]
