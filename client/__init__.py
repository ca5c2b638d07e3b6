"""The client API: run your own PyTorch code on genie workers.

    import genie
    genie.connect("http://127.0.0.1:8000")          # or GENIE_URL / GENIE_API_KEY
    fast = torch.compile(model, backend="genie")     # or genie.remote(model)
    with genie.capture():                            # or x.to("genie"): eager ops recorded on the genie device,
        y = torch.randn(8, 64) @ w                   # run as one program when a value is needed (y.cpu(), ...)

Each graph is lowered to an ATen program, named by its sha256, sent to a worker once with its weights; each
call then moves only its inputs and outputs. genie.client.report() says what was compiled and what ran where.
"""

from .backend import GenieFallbackWarning, genie_backend, register
from .capture import capture
from .device import device, register_if_free
from .errors import AutogradOutOfScope, ProgramRefused
from .remote import remote
from .report import report, reset
from .session import Session, connect, current

register()
register_if_free()

__all__ = ["AutogradOutOfScope", "GenieFallbackWarning", "ProgramRefused", "Session", "capture", "connect",
           "current", "device", "genie_backend", "remote", "report", "reset"]
