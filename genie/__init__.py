"""genie-serve: inference serving with a planner that understands what a model is.

`genie.connect`, `genie.remote`, `genie.capture` and `genie.device` (the client API, genie.client) load on
first use, so `import genie` does not import torch.
"""

from typing import Any

__version__ = "0.1.0"

_CLIENT = ("capture", "connect", "device", "remote")


def __getattr__(name: str) -> Any:
    if name in _CLIENT:
        from genie import client

        return getattr(client, name)
    raise AttributeError(f"module 'genie' has no attribute {name!r}")
