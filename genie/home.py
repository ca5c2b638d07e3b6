"""Where the registry lives: $GENIE_HOME and $GENIE_REGISTRY_URL, read when asked, never at import.

Kept apart from `genie.config` (pydantic) so that `genie-models list` opens the registry without it.
"""

from __future__ import annotations

import os
from pathlib import Path


def registry_home(home: str | None = None) -> Path:
    """`home`, else $GENIE_HOME, else ~/.genie: artifacts, model folders and the SQLite file."""
    return Path(home or os.environ.get("GENIE_HOME") or Path.home() / ".genie").expanduser()


def registry_url(url: str | None = None, home: str | None = None) -> str:
    """`url`, else $GENIE_REGISTRY_URL, else SQLite in the registry home."""
    return url or os.environ.get("GENIE_REGISTRY_URL") or f"sqlite:///{registry_home(home) / 'registry.db'}"
