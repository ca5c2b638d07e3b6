"""Programs on a worker (the client API's far end): safe loading, weights resident, one round trip per call."""

from .host import ProgramHost
from .wire import FORMAT, ProgramRefused, parse_program, program_id

__all__ = ["FORMAT", "ProgramHost", "ProgramRefused", "parse_program", "program_id"]
