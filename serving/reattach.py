"""Loading a fragment on a worker that may have outlived a genie-serve (attached, or a Ray actor).

A restarted genie-serve finds its fragments still loaded there: it takes them as they are when they were loaded
from the same spec (no second load, the worker's load counter stays), replaces them when the config changed
them, and frees every sequence they hold, since a fresh router knows none of them and their KV would
otherwise stay taken until the supervisor's stray check resets the whole replica.
"""

from __future__ import annotations

import logging

from genie.errors import AlreadyExists
from genie.workers.client import WorkerClient
from genie.workers.contract import LLM, FragmentInfo, FragmentSpec

log = logging.getLogger("genie.serve")


async def load_or_reuse(client: WorkerClient, spec: FragmentSpec, timeout: float) -> FragmentInfo:
    try:
        info = await client.load_fragment(spec, timeout=timeout, reuse=True)
    except AlreadyExists:  # loaded there from another spec (the config or the model changed): replace it
        log.info("fragment %s on %s was loaded from another spec; reloading it", spec.fragment_id, client.address)
        await client.unload_fragment(spec.fragment_id, timeout=timeout)
        return await client.load_fragment(spec, timeout=timeout)
    if spec.kind == LLM:
        freed = await client.release_all(spec.fragment_id, timeout=timeout)
        if freed:
            log.info("freed %d sequences on %s that a previous genie-serve left in fragment %s", freed,
                     client.address, spec.fragment_id)
    return info
