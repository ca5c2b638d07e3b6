"""Tensors a program's run kept on the worker, named by handle, so that the next run can take them as inputs
without a byte of them on the wire: this is how a decoder's KV cache stays here across generate steps.

Each client (RunProgramRequest.client_id) has its own store, bounded in bytes together with the weights it
bound (ProgramLimits.client_bytes); the least recently used tensor goes first, and the client frees the rest
by naming them in a later request's `release`. A handle is random, and names a tensor only for its client.
"""

from __future__ import annotations

import secrets

import torch

from genie.errors import NotFound, ResourceExhausted

from .cache import ByteLRU


def nbytes(tensor: torch.Tensor) -> int:
    return tensor.numel() * tensor.element_size()


class ResidentTensors:
    def __init__(self, client_bytes: int) -> None:
        self.client_bytes = client_bytes
        self._clients: dict[str, ByteLRU[torch.Tensor]] = {}

    def keep(self, client: str, tensor: torch.Tensor, room: int) -> str:
        """Stores `tensor` for `client`, whose tensors here may add up to `room` bytes (its budget less the
        weights it bound); returns its handle. The client's older tensors are dropped to make room, never
        another client's."""
        size = nbytes(tensor)
        if size > room:
            raise ResourceExhausted(
                f"an output of {size} bytes cannot stay on this worker: this client may keep {room} bytes of "
                f"tensors there ({self.client_bytes} bytes less the weights it bound)")
        store = self._clients.setdefault(client, ByteLRU(self.client_bytes))
        store.budget = room
        handle = secrets.token_hex(16)
        store.put(handle, tensor, size)
        return handle

    def get(self, client: str, handle: str) -> torch.Tensor:
        store = self._clients.get(client)
        tensor = store.get(handle) if store is not None else None
        if tensor is None:
            raise NotFound(f"no tensor kept on this worker as {handle[:12]!r} for this client: it was released, "
                           "dropped to make room for newer ones, or the worker restarted; run the whole "
                           "computation again (for generate: call generate again)")
        return tensor

    def release(self, client: str, handles: list[str]) -> None:
        store = self._clients.get(client)
        if store is None:
            return
        for handle in handles:
            store.pop(handle)
        if not len(store):
            del self._clients[client]

    def usage(self, client: str) -> tuple[int, int]:
        """(tensors, bytes) the client keeps here."""
        store = self._clients.get(client)
        return (len(store), store.used) if store is not None else (0, 0)
