"""`genie-models`: register, inspect, verify and plan models in the registry.

Runs against $GENIE_HOME / $GENIE_REGISTRY_URL. Every command takes --json. Errors are one line on
stderr and a non-zero exit (1: the request failed, 2: the command line is wrong), never a traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable
from typing import Any, NoReturn

from genie.errors import GenieError, InvalidRequest

from .names import parse_ref

PROG = "genie-models"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        print(f"{PROG}: error: {message} (see {self.prog} --help)", file=sys.stderr)
        raise SystemExit(2)


def _open():
    from .store import Registry

    return Registry.open()


def _emit(args, data: Any, text: str) -> None:
    print(json.dumps(data, indent=2, default=str) if args.json else text)


def cmd_register(args) -> int:
    from .cli_format import registered_line

    with _open() as reg:
        record = reg.register(args.name, args.source, version=args.version, alias=args.alias, progress=not args.quiet,
                              quantization=args.quantization)
    _emit(args, {**record.to_dict(), "created": record.created}, registered_line(record))
    if args.quantization == "int8":
        from .quantized import INT8_PATH, has_int8

        note = f"int8 weights stored as {INT8_PATH}" if has_int8(record) else (
            "no int8 artifact: this model has no Llama-family decoder linears (workers quantise it at load)")
        print(f"{PROG}: {note}", file=sys.stderr)
    return 0


def cmd_list(args) -> int:
    from .cli_format import models_table

    with _open() as reg:
        models = reg.list_models()
    _emit(args, [m.to_dict() for m in models], models_table(models))
    return 0


def cmd_show(args) -> int:
    from .analysis import analyzer_version
    from .cache import cached_profile
    from .cli_format import version_text

    ref = parse_ref(args.ref)
    with _open() as reg:
        record = reg.resolve(ref.name, ref.selector)
        profile = cached_profile(reg, record.content_hash)
        plans = reg.plans(record)
    data = {
        **record.to_dict(),
        "analyzer_version": analyzer_version(),
        "profile": profile.to_dict() if profile else None,
        "profile_summary": profile.summary() if profile else None,
        "plans": [p.to_dict() for p in plans],
    }
    _emit(args, data, version_text(record, profile, analyzer_version(), plans))
    return 0


def cmd_alias(args) -> int:
    with _open() as reg:
        record = reg.set_alias(args.name, args.version, args.alias)
    _emit(args, record.to_dict(), f"{args.name}@{args.alias} -> {record.ref}")
    return 0


def cmd_delete(args) -> int:
    ref = parse_ref(args.ref)
    if isinstance(ref.selector, str):
        raise InvalidRequest(
            f"delete takes NAME or NAME:VERSION, not an alias ({args.ref}); see genie-models show {args.ref}"
        )
    with _open() as reg:
        deleted = reg.delete(ref.name, ref.selector, force=args.force)
    _emit(args, {"deleted": [r.ref for r in deleted]}, "deleted " + ", ".join(r.ref for r in deleted))
    return 0


def cmd_verify(args) -> int:
    from .cli_format import verify_text

    ref = parse_ref(args.ref)
    with _open() as reg:
        reports = reg.verify(ref.name, ref.selector)
    _emit(args, [r.to_dict() for r in reports], verify_text(reports))
    damaged = [r.ref for r in reports if not r.ok]
    if damaged:
        print(f"{PROG}: error: damaged: {', '.join(damaged)}; register the model again to repair it", file=sys.stderr)
        return 1
    return 0


def cmd_analyze(args) -> int:
    ref = parse_ref(args.ref)
    with _open() as reg:
        record = reg.resolve(ref.name, ref.selector)
        profile = reg.analyze(record)
    _emit(args, {"version": record.ref, "profile": profile.to_dict()}, f"{record.ref}: {profile.summary()}")
    return 0


def cmd_plan(args) -> int:
    from genie.config import load_config

    from .cli_format import plan_text
    from .cluster import cluster_from_config
    from .store import Registry

    cfg = load_config(args.config)
    ref = parse_ref(args.ref)
    cluster = cluster_from_config(cfg)
    with Registry.from_config(cfg.registry) as reg:
        record = reg.resolve(ref.name, ref.selector)
        plan = reg.get_or_make_plan(record, cluster)
        cached = reg.stats.plans_computed == 0
        profile = _explained_profile(reg, record) if args.explain else None
    if profile is not None:
        plan = _pinned(cfg, ref.name, profile, cluster, plan)
    fingerprint = cluster.fingerprint()
    data = {
        "version": record.ref,
        "cluster_fingerprint": fingerprint,
        "cached": cached,
        "cluster": cluster.to_dict(),
        "summary": plan.summary(),
        "plan": plan.to_dict(),
    }
    text = plan_text(record, plan, fingerprint, cached)
    if profile is not None:
        text += "\n" + _explain(args, cfg, record.name, profile, plan, cluster, data)
    _emit(args, data, text)
    return 0


def _explained_profile(reg, record):
    from .cache import cached_profile

    profile = cached_profile(reg, record.content_hash)
    if profile is None:
        raise InvalidRequest(f"{record.ref} has no profile for this analyser; run `{PROG} analyze {record.ref}` first")
    return profile


def _pinned(cfg, name: str, profile, cluster, plan):
    """The plan genie-serve would run: the entry's pinned strategy when it pins one."""
    from genie.semantic import PlanOptions
    from genie.semantic import plan as make_plan

    entry = next((m for m in cfg.served_models if m.name == name), None)
    pinned = entry.strategy.value if entry is not None else "auto"
    if pinned in ("auto", plan.strategy):
        return plan
    try:
        return make_plan(profile, cluster, PlanOptions(strategy=pinned))
    except ValueError as exc:
        raise InvalidRequest(f"model {name!r}: {exc} (strategy: auto lets the planner choose)") from None


def _explain(args, cfg, name: str, profile, plan, cluster, data: dict) -> str:
    from .cli_explain import check_url, explain, explain_text, served_report

    url = check_url(args.url) if args.url else None
    if url is None and cfg.serving.http_port:
        url = f"http://{cfg.serving.host}:{cfg.serving.http_port}"
    served, source = served_report(url, name, args.api_key) if url else (None, "no genie-serve URL to ask")
    data["explain"] = {"measured_by": source, "decisions": explain(profile, plan, cluster, served)}
    if served and "error" in served:
        source += f" ({served['error']})"
    return explain_text(data["explain"]["decisions"], source if served else f"predictions only: {source}")


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", help="print machine-readable JSON on stdout")
    common.add_argument("-v", "--verbose", action="store_true", help="log what the registry does on stderr")
    parser = _Parser(prog=PROG, description="Register models once; inspect, verify and plan them.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, handler: Callable[[Any], int], help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, parents=[common], help=help_text, description=help_text)
        p.set_defaults(handler=handler)
        return p

    p = add("register", cmd_register, "import a model (HF folder, .gguf, pkg:DIST/PATH, py:module:function)")
    p.add_argument("name")
    p.add_argument("source")
    p.add_argument("--version", help="version number to give it (default: the next one)")
    p.add_argument("--alias", help="alias to point at it, e.g. prod")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.add_argument("--quantization", choices=("none", "int8"), default="none",
                   help="int8: also store the weight-only int8 copy that `model.quantization: int8` serves "
                        "(default none; genie-serve computes it on first need otherwise)")
    add("list", cmd_list, "list models, their versions and aliases")
    add("show", cmd_show, "metadata, profile and cached plans of NAME[:VERSION|@ALIAS]").add_argument("ref")
    p = add("alias", cmd_alias, "point ALIAS at VERSION of NAME")
    p.add_argument("name")
    p.add_argument("version")
    p.add_argument("alias")
    p = add("delete", cmd_delete, "delete NAME[:VERSION] and files no other version uses")
    p.add_argument("ref")
    p.add_argument("--force", action="store_true", help="also delete aliases pointing at it")
    add("verify", cmd_verify, "re-hash the files of NAME[:VERSION] and report damage").add_argument("ref")
    add("analyze", cmd_analyze, "recompute the semantic profile of NAME[:VERSION|@ALIAS]").add_argument("ref")
    p = add("plan", cmd_plan, "print (and cache) the plan of NAME[:VERSION|@ALIAS] for a config's cluster")
    p.add_argument("ref")
    p.add_argument("--config", required=True, help="genie-serve YAML config describing the workers")
    p.add_argument("--explain", action="store_true",
                   help="per decision: the reason, the predicted cost and, from a running genie-serve, the "
                   "measured one")
    p.add_argument("--url", help="genie-serve to ask for measurements (default: the config's serving host:http_port)")
    p.add_argument("--api-key", default=os.environ.get("GENIE_API_KEY"),
                   help="API key for that genie-serve (default: $GENIE_API_KEY)")
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    try:
        return args.handler(args)
    except GenieError as exc:
        return _fail(str(exc))
    except OSError as exc:
        where = f" ({exc.filename})" if exc.filename else ""
        return _fail(f"{exc.strerror or exc}{where}")
    except KeyboardInterrupt:
        return _fail("interrupted; nothing was recorded for the unfinished step", code=130)
    except Exception as exc:  # a bug, or a database failure: still one line, with a way to get more
        from sqlalchemy.exc import SQLAlchemyError

        if isinstance(exc, SQLAlchemyError):
            return _fail(f"registry database error: {_first_line(exc)}")
        if os.environ.get("GENIE_DEBUG"):
            raise
        return _fail(f"internal error {type(exc).__name__}: {_first_line(exc)} (set GENIE_DEBUG=1 for a traceback)")


def _fail(message: str, code: int = 1) -> int:
    print(f"{PROG}: error: {' '.join(message.split())}", file=sys.stderr)
    return code


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


if __name__ == "__main__":
    sys.exit(main())
