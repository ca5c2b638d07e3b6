"""The genie-serve config: one validated, frozen object loaded once from YAML.

Every field documents its unit and default. Unknown keys and bad values are refused with a message that
names the key and the value, e.g. ``serving.max_batch_tokens must be > 0, got -3``.
No environment reads happen at import time; `resolve_*` helpers read the environment when called.
"""

from __future__ import annotations

import enum
import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from genie.errors import ConfigError
from genie.home import registry_home, registry_url
from genie.registry.names import NAME_RE

DEVICE_RE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


class Dtype(str, enum.Enum):
    AUTO = "auto"  # bfloat16 where the device supports it fast, else float32
    BFLOAT16 = "bfloat16"
    FLOAT16 = "float16"
    FLOAT32 = "float32"


class Quantization(str, enum.Enum):
    """How the workers hold an LLM's decoder weights."""

    NONE = "none"  # in the compute dtype
    INT8 = "int8"  # weight-only int8, one scale per output channel, for the decoder layers' linears


class Strategy(str, enum.Enum):
    """How the planner places a model (values as in semantic.planner.options.PINNABLE): auto lets it choose."""

    AUTO = "auto"
    REPLICAS = "replicas"  # a whole copy per worker that holds one
    PIPELINE = "pipeline"  # stages of contiguous blocks / layers on several workers
    BRANCH_PARALLEL = "branch_parallel"  # multimodal: each encoder on its own worker, at once
    RECSYS_SPLIT = "recsys_split"  # recommenders: embedding tables on one worker, dense MLP on another
    DISAGGREGATED = "disaggregated"  # LLMs: prefill and decode on different workers, one KV handoff a request


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_enum_values=False)


class ModelConfig(_Section):
    name: str  # registry name of the model to serve
    version: str | None = None  # version number or alias ("prod"); None serves the newest version
    source: str | None = None  # where to register it from when missing (HF folder, .gguf, pkg:..., py:...)
    register_if_missing: bool = False  # register `source` on start when the registry lacks `name`
    dtype: Dtype = Dtype.AUTO  # compute dtype on the workers
    max_context: int | None = Field(default=None, gt=0)  # tokens; None takes the model's own limit
    # Dynamic batching of stateless models (encoders, vision, factories); LLMs batch per step instead.
    max_batch_size: int | None = Field(default=None, gt=0, le=4096)  # requests per forward; None: from the profile
    max_queue_delay_ms: float | None = Field(default=None, ge=0, le=10_000)  # a free worker waits this long
    #                                        for a fuller batch; None: 0, it takes what waits at once
    strategy: Strategy = Strategy.AUTO  # pin the plan's strategy; one that does not apply or fit is refused at start
    quantization: Quantization = Quantization.NONE  # LLMs: int8 holds the decoder layers' linears as int8
    #   int8 also covers a Llama-family head (tied or not), and the layers' int8 comes from the registry's int8
    #   artifact (registry/quantized.py: made by `register --quantization int8`, else on the first start)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not NAME_RE.match(v):
            raise ValueError(f"must match {NAME_RE.pattern} (letters, digits, '.', '_', '-'), got {v!r}")
        return v

    @model_validator(mode="after")
    def _source(self) -> ModelConfig:
        if self.register_if_missing and not self.source:
            raise ValueError("register_if_missing needs model.source to say where to register from")
        return self


class RegistryConfig(_Section):
    url: str | None = None  # SQLAlchemy URL; None: $GENIE_REGISTRY_URL, else sqlite:///$GENIE_HOME/registry.db
    home: str | None = None  # registry home (artifacts, SQLite file); None: $GENIE_HOME, else ~/.genie
    # Seconds between looks at the registry for served models it lacked at start (registered later, e.g. by
    # `genie-models register` against a shared registry): they are loaded and served without a restart, and
    # reported not ready until then. None: every served model must be in the registry (or register_if_missing).
    poll_interval_s: float | None = Field(default=None, gt=0, le=3600)

    def resolve_home(self) -> Path:
        return registry_home(self.home)

    def resolve_url(self) -> str:
        return registry_url(self.url, self.home)


class Launcher(str, enum.Enum):
    """Who starts the workers. Unset: `addresses` when launch is 0 and addresses are given, else `local`."""

    LOCAL = "local"  # `launch` processes on 127.0.0.1, children of genie-serve (plus any `addresses`)
    ADDRESSES = "addresses"  # only the running workers at `addresses`; a restarted genie-serve re-attaches
    RAY = "ray"  # `launch` Ray actors placed on the cluster at `ray_address`, each running a genie-worker


class ProgramLimitsConfig(_Section):
    """What one client's genie.client programs may take of a worker (serving.client_programs), given to each
    worker genie-serve launches (workers/programs/limits.py has the same defaults). Past a limit a call is
    refused with RESOURCE_EXHAUSTED (HTTP 429) that names it; the worker keeps serving everyone else."""

    max_output_elements: int = Field(default=1 << 28, gt=0)  # elements of any one op's output; 268435456 (1 GiB
    #                            of float32); checked on meta tensors at LoadProgram, and between ops as they run
    max_run_s: float = Field(default=60.0, gt=0, le=86400)  # wall time of one RunProgram, s, checked after each op
    client_mib: int = Field(default=2048, gt=0, le=1 << 30)  # one client's bound weights plus the tensors it
    #                            keeps on the worker (a decoder's KV), MiB per worker


class WorkersConfig(_Section):
    launcher: Launcher = Launcher.LOCAL  # who starts the workers: local | addresses | ray (see Launcher)
    launch: int = Field(default=2, ge=0)  # workers to start: local processes, or Ray actors with launcher ray
    addresses: tuple[str, ...] = ()  # host:port of running workers to attach to, besides the launched ones
    ray_address: str = "auto"  # launcher ray: auto (the cluster `ray start` made here), local (start a head in
    #                            this process), or the cluster's host:port / ray://host:port
    ray_resources: dict[str, float] = Field(default_factory=dict)  # launcher ray: custom resources each worker
    #                            actor asks for besides CPU, GPU and memory, e.g. {genie_worker: 1}
    ray_namespace: str | None = Field(default=None, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")  # launcher ray:
    #   set, the actors are detached and named in this Ray namespace, so a genie-serve that died re-attaches to
    #   the ones still alive when started again (needs link_token_file; a stop by SIGTERM still removes them);
    #   None: a namespace of each start's own, and the actors end with genie-serve
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    threads: int | None = Field(default=None, gt=0)  # CPU threads per launched worker; None: cores // launch
    #                            (launcher ray: also the CPUs each actor reserves; None: 1)
    kv_cache_mib: int = Field(default=512, gt=0)  # KV cache budget per worker, MiB
    block_size: int = Field(default=16, gt=0, le=1024)  # tokens per KV block
    memory_mib: int | None = Field(default=None, gt=0)  # memory per worker for planning; None: detected
    link_gbps: float = Field(default=10.0, gt=0)  # bandwidth between workers for planning, Gbit/s
    start_timeout_s: float = Field(default=180.0, gt=0)  # how long a worker may take to start and load
    restart: bool = True  # restart a launched worker that died or hung, re-probe an attached one
    restart_backoff_s: float = Field(default=1.0, gt=0)  # first wait before a restart; doubles each failure
    restart_backoff_max_s: float = Field(default=30.0, gt=0)  # longest wait between restarts
    link_token_file: str | None = None  # file with the link credential of attached workers; launched
    #                                     workers get a fresh random one per start through the environment
    programs: ProgramLimitsConfig = ProgramLimitsConfig()  # limits of genie.client programs on launched workers
    #                                     (attached workers: the genie-worker --program-* flags they were started with)

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        if not DEVICE_RE.match(v):
            raise ValueError(f"must be auto, cpu, cuda or cuda:N, got {v!r}")
        return v

    @field_validator("addresses")
    @classmethod
    def _addresses(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for addr in v:
            host, sep, port = addr.rpartition(":")
            if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError(f"must be a list of host:port, got {addr!r}")
        return v

    @model_validator(mode="before")
    @classmethod
    def _launcher(cls, data: Any) -> Any:
        """Fills in what the launcher implies and refuses keys that contradict it."""
        if not isinstance(data, dict):
            return data
        launcher, given = data.get("launcher"), set(data)
        if launcher is None and data.get("launch") == 0 and data.get("addresses"):
            return {**data, "launcher": Launcher.ADDRESSES.value}
        if launcher != Launcher.RAY.value and given & {"ray_address", "ray_resources", "ray_namespace"}:
            key = sorted(given & {"ray_address", "ray_resources", "ray_namespace"})[0]
            raise ValueError(f"has {key}, which applies to launcher ray only, but the launcher is "
                             f"{launcher or 'local'!r}; set launcher: ray or drop {key}")
        if launcher == Launcher.ADDRESSES.value:
            if data.get("launch"):
                raise ValueError(f"has launcher addresses, which starts no worker, but launch is {data['launch']!r}; "
                                 "drop launch, or use launcher local to launch workers beside the addresses")
            return {**data, "launch": 0}
        if launcher == Launcher.RAY.value and data.get("addresses"):
            raise ValueError("has launcher ray, which places every worker itself, but addresses are given; drop "
                             "addresses, or use launcher local (launched + attached) or addresses")
        return data

    @field_validator("ray_address")
    @classmethod
    def _ray_address(cls, v: str) -> str:
        if v not in ("auto", "local") and not re.fullmatch(r"(ray://)?[\w.\-\[\]:]+:\d{1,5}", v):
            raise ValueError(f"must be auto, local, HOST:PORT or ray://HOST:PORT, got {v!r}")
        return v

    @field_validator("ray_resources")
    @classmethod
    def _ray_resources(cls, v: dict[str, float]) -> dict[str, float]:
        for name, amount in v.items():
            if name in ("CPU", "GPU", "memory") or amount <= 0:
                raise ValueError(f"must map custom resource names to amounts > 0 (CPU, GPU and memory come from "
                                 f"the plan), got {name!r}: {amount!r}")
        return v

    @model_validator(mode="after")
    def _some_worker(self) -> WorkersConfig:
        if self.launch == 0 and not self.addresses:
            if self.launcher == Launcher.ADDRESSES:
                raise ValueError("has launcher addresses, which needs the workers' host:port under addresses")
            if self.launcher == Launcher.RAY:
                raise ValueError("has launcher ray with launch 0; launch is the number of worker actors to start")
            raise ValueError("launch is 0 and no addresses are given: genie-serve needs at least one worker")
        return self

    @model_validator(mode="after")
    def _ray_namespace(self) -> WorkersConfig:
        if self.ray_namespace is not None and self.link_token_file is None:
            raise ValueError("has ray_namespace (actors that outlive genie-serve) but no link_token_file; a "
                             "restarted genie-serve must send the surviving workers the credential they were "
                             "started with, so put it in a file and name it under link_token_file")
        if self.ray_namespace is not None and self.ray_address == "local":
            raise ValueError("has ray_namespace with ray_address local, whose head stops with genie-serve, so no "
                             "actor could outlive it; start a cluster with `ray start --head` and use auto")
        return self

    @property
    def count(self) -> int:
        return self.launch + len(self.addresses)


class ServingConfig(_Section):
    host: str = "127.0.0.1"  # interface the front doors listen on
    http_port: int = Field(default=8000, ge=0, le=65535)  # OpenAI-compatible HTTP; 0 picks a free port
    grpc_port: int | None = Field(default=50051, ge=0, le=65535)  # gRPC front door; None turns it off
    max_batch_tokens: int = Field(default=2048, gt=0)  # tokens per step across all sequences
    max_running_requests: int = Field(default=64, gt=0)  # sequences in a step at most
    max_queue: int = Field(default=256, ge=0)  # waiting requests beyond which new ones get 429
    prefill_chunk_tokens: int = Field(default=512, gt=0)  # longest prefill chunk of one request per step
    default_max_tokens: int = Field(default=256, gt=0)  # when a request gives no max_tokens
    drain_grace_s: float = Field(default=30.0, ge=0)  # how long running requests may finish on shutdown
    worker_timeout_s: float = Field(default=30.0, gt=0)  # a step taking longer marks the worker dead
    migration_limit: int = Field(default=3, ge=0)  # moves of one request to another replica at most
    prefix_caching: bool = True  # reuse the KV of a prompt prefix computed before (shared system prompts, chats)
    disaggregation: Literal["auto", "off", "on"] = "auto"  # prefill and decode on separate replicas, one KV
    #   handoff each: auto follows the plan, on makes the first replica prefill and the others decode
    handoff_lease_s: float = Field(default=10.0, gt=0, le=600)  # a prefill worker frees unacknowledged KV after this
    client_programs: bool = False  # POST /v1/genie/programs: run genie.client programs (torch.compile
    #   backend="genie", genie.remote) on the workers; off by default, since any client with a key may then
    #   send its own tensor programs to the workers that serve everyone
    api_keys_file: str | None = None  # one API key per line; $GENIE_API_KEYS (comma-separated) adds more
    protect_metrics: bool = False  # /metrics, /health/live and /health/ready need a key too
    tls_cert: str | None = None  # PEM certificate for HTTPS and gRPC TLS; needs tls_key
    tls_key: str | None = None  # PEM private key of tls_cert
    max_body_mib: float = Field(default=8.0, gt=0)  # largest HTTP request body, MiB
    header_timeout_s: float = Field(default=10.0, gt=0)  # a client must send its request head within this
    access_log: bool = True  # one log line per HTTP request (method, path, status, model, tokens, latency)
    # Re-planning of a served stateless model whose measured step times miss the plan's predictions by more
    # than half (semantic/planner/recost.py): off skips the re-costing; report logs it and shows it in
    # GET /v1/genie/plans (`replan`); auto also switches to a strategy that then wins clearly, at the next drain
    # point: the new fragments load and warm beside the old ones, new batches go to them, batches in flight
    # finish on the old ones, which are then unloaded. No request is dropped. LLM plans are only reported.
    replan: Literal["off", "report", "auto"] = "report"
    replan_interval_s: float = Field(default=5.0, gt=0)  # how often serving re-costs a plan, s (report: on read)

    @model_validator(mode="after")
    def _tls(self) -> ServingConfig:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together: set both, or neither")
        return self

    @model_validator(mode="after")
    def _chunk(self) -> ServingConfig:
        if self.prefill_chunk_tokens > self.max_batch_tokens:
            raise ValueError(
                f"prefill_chunk_tokens ({self.prefill_chunk_tokens}) must be <= max_batch_tokens "
                f"({self.max_batch_tokens})"
            )
        return self


class GenieConfig(_Section):
    model: ModelConfig | None = None  # the one model to serve; or list several under `models`
    models: tuple[ModelConfig, ...] = ()  # several models served side by side, each routed by its name
    registry: RegistryConfig = RegistryConfig()
    workers: WorkersConfig = WorkersConfig()
    serving: ServingConfig = ServingConfig()

    @model_validator(mode="after")
    def _some_model(self) -> GenieConfig:
        if (self.model is None) == (not self.models):
            raise ValueError(
                "give the model to serve under `model:`, or several under `models:` (a list), not both"
                if self.model is not None else "model is required (or list several under `models:`)"
            )
        names = [m.name for m in self.served_models]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"models lists {twice[0]!r} twice; each served model needs its own name")
        return self

    @property
    def served_models(self) -> tuple[ModelConfig, ...]:
        return (self.model,) if self.model is not None else self.models


_OPS = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<", "less_than_equal": "<="}


def _describe(err: dict[str, Any]) -> str:
    loc = ".".join(str(p) for p in err["loc"])
    kind = err["type"]
    given = err.get("input")
    if kind == "extra_forbidden":
        return f"{loc} is not a known key; remove it or check its spelling"
    if kind == "missing":
        return f"{loc} is required"
    if kind in _OPS:
        bound = next(iter(err["ctx"].values()))
        return f"{loc} must be {_OPS[kind]} {bound}, got {given!r}"
    msg = err["msg"].removeprefix("Value error, ")
    if kind == "value_error":
        return f"{loc} {msg}" if loc else msg
    return f"{loc}: {msg}, got {given!r}" if loc else msg


def parse_config(data: Any, origin: str = "config") -> GenieConfig:
    """Validates a parsed YAML mapping; raises ConfigError naming the first bad key."""
    if not isinstance(data, dict):
        raise ConfigError(f"{origin}: expected a mapping at the top level, got {type(data).__name__}")
    try:
        return GenieConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{origin}: {_describe(exc.errors()[0])}") from None


def load_config(path: str | os.PathLike[str]) -> GenieConfig:
    """Loads and validates a YAML config file."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from None
    return parse_config(data, origin=str(path))
