"""The "genie" TorchDynamo backend: each FX graph runs on a genie worker as a content-named program.

For each new set of input shapes a graph is lowered (client/lower.py), placed once, and its weights bound
once; each call then sends only its activations. A graph the worker refuses, or that cannot be lowered, runs
here with a warning that says why. backward() through a remote graph raises AutogradOutOfScope. With a
residency policy (genie.remote of a decoder LLM, client/residency.py) the outputs it names stay on the worker.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx

from .errors import AutogradOutOfScope, ClientError, ProgramRefused
from .lower import CannotLower, Lowered, lower
from .report import REPORT
from .residency import Deferred, KeepKV
from .session import Bound, Session, current

MAX_PROGRAMS_PER_GRAPH = 128  # shapes a graph is specialised for before the rest run locally (a decode
# graph lowers one program per sequence length: 128 covers a 128-token generate)


class GenieFallbackWarning(UserWarning):
    """A graph runs locally: the worker refused one of its ops, or it holds something a program cannot say."""


@dataclass(slots=True)
class Placed:
    lowered: Lowered
    bound: Bound
    keep: tuple[int, ...] = ()  # outputs that stay on the worker


LOCAL = "local"


class RemoteGraph:
    """What the backend returns to Dynamo: a callable with the graph module's signature."""

    def __init__(self, gm: torch.fx.GraphModule, weight_positions: set[int], session: Session | None,
                 residency: KeepKV | Deferred | None = None, placement: str = "") -> None:
        self.gm = gm
        self.weight_positions = weight_positions
        self._session = session
        self._residency = residency
        self._placement = placement
        self._placed: dict[tuple[Any, ...], Placed | str] = {}

    @property
    def session(self) -> Session:
        return self._session if self._session is not None else current()

    def __call__(self, *args: Any) -> Any:
        key = self._key(args)
        placed = self._placed.get(key)
        if placed is None:
            placed = self._placed[key] = self._specialize(list(args))
        if placed == LOCAL:
            if any(self.session.is_placeholder(a) for a in args):
                raise ClientError("this graph must run locally, but some of its inputs (a KV cache) live on "
                                  "the genie worker; run the model with genie.remote(model, keep_kv=False)")
            REPORT.local_calls += 1
            return self.gm(*args)
        assert isinstance(placed, Placed)
        session = self.session
        stamp = tuple((id(args[i]), args[i]._version) for i in placed.lowered.weight_args.values())
        if stamp != placed.bound.weights:  # a weight was replaced or changed in place: bind the new bytes
            placed.bound = session.bind(placed.lowered, list(args), self._placement)
        outputs = session.run(placed.lowered, placed.bound, list(args), placed.keep, self._placement)
        REPORT.kept_outputs += len(placed.keep)
        REPORT.remote_calls += 1
        if torch.is_grad_enabled() and any(isinstance(a, torch.Tensor) and a.requires_grad for a in args):
            anchor = next(a for a in args if isinstance(a, torch.Tensor) and a.requires_grad)
            outputs = [_NoBackward.apply(anchor, out) for out in outputs]
        return tuple(outputs)

    def _key(self, args: tuple[Any, ...]) -> tuple[Any, ...]:
        return tuple((tuple(a.shape), a.dtype, a.device.type) if isinstance(a, torch.Tensor) else a
                     for i, a in enumerate(args) if i not in self.weight_positions)

    def _specialize(self, args: list[Any]) -> Placed | str:
        remote = [p for p in self._placed.values() if p != LOCAL]
        if len(remote) >= MAX_PROGRAMS_PER_GRAPH:
            return self._local(f"it already has {MAX_PROGRAMS_PER_GRAPH} programs, one per input shape")
        if any(isinstance(a, torch.Tensor) and a.device.type != "cpu" for a in args):
            return self._local("its inputs are not on the CPU")
        started = time.perf_counter()
        try:
            lowered = lower(self.gm, args, self.weight_positions)
        except CannotLower as exc:
            return self._local(f"it holds {exc}")
        REPORT.lower_seconds += time.perf_counter() - started
        REPORT.programs += 1
        REPORT.respecializations += bool(self._placed)
        started = time.perf_counter()
        try:
            self.session.place(lowered, self._placement)
        except ProgramRefused as exc:
            return self._local(f"the worker refused it: {exc}")
        bound = self.session.bind(lowered, args, self._placement)
        REPORT.place_seconds += time.perf_counter() - started
        return Placed(lowered, bound, self._residency.keep(lowered) if self._residency else ())

    def _local(self, why: str) -> str:
        warnings.warn(f"genie: this graph runs locally (eager) because {why}", GenieFallbackWarning, stacklevel=3)
        REPORT.fallbacks += 1
        return LOCAL


class _NoBackward(torch.autograd.Function):
    """Gives a remote graph's outputs a grad_fn whose backward says autograd is out of scope."""

    @staticmethod
    def forward(ctx: Any, anchor: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        return out.clone()

    @staticmethod
    def backward(ctx: Any, *grads: Any) -> Any:
        raise AutogradOutOfScope(
            "backward() reached a graph that ran on a genie worker; autograd through remote graphs is out of "
            "scope (genie runs inference). Run the training step locally: torch.compile(model) without "
            "backend='genie'."
        )


def _weight_positions(gm: torch.fx.GraphModule, example_inputs: list[Any]) -> set[int]:
    """Graph inputs that are parameters or buffers: Dynamo marks them static (or names them so)."""
    names = [n.name for n in gm.graph.nodes if n.op == "placeholder"]
    found = set()
    for i, value in enumerate(example_inputs):
        name = names[i] if i < len(names) else ""
        if (isinstance(value, torch.nn.Parameter) or getattr(value, "_dynamo_static_input_type", None)
                or "_parameters_" in name or "_buffers_" in name):
            found.add(i)
    return found


def genie_backend(gm: torch.fx.GraphModule, example_inputs: list[Any], session: Session | None = None,
                  residency: KeepKV | Deferred | None = None, placement: str = "", **_: Any) -> RemoteGraph:
    """torch.compile(model, backend="genie"): `session` defaults to genie.connect's (or GENIE_URL's).
    genie.remote passes `residency` (which outputs stay on the worker) and `placement` (one worker per model)."""
    from torch._guards import CompileContext

    REPORT.graphs += 1
    compile_id = CompileContext.current_compile_id()
    REPORT.recompiles += bool(compile_id is not None and compile_id.frame_compile_id)
    return RemoteGraph(gm, _weight_positions(gm, example_inputs), session, residency, placement)


def register() -> None:
    """Makes backend="genie" work in this process. Installed, the torch_dynamo_backends entry point does it
    lazily (and torch refuses a second registration); run from a source tree without it, this registers it."""
    from importlib.metadata import entry_points

    from torch._dynamo.backends.registry import _COMPILER_FNS, register_backend

    if "genie" in _COMPILER_FNS or entry_points(group="torch_dynamo_backends", name="genie"):
        return
    register_backend(name="genie")(genie_backend)
