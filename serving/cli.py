"""`genie-serve --config FILE [--http-port N] [--grpc-port N]`."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from genie.config import GenieConfig, load_config
from genie.errors import ConfigError, GenieError
from genie.ports import check_port_free


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2, no usage dump
        print(f"genie-serve: {message} (see genie-serve --help)", file=sys.stderr)
        raise SystemExit(2)


def _port(text: str) -> int:
    if not text.isdigit() or not 0 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"must be a port number 0-65535, got {text!r}")
    return int(text)


def check_ports(cfg: GenieConfig, http_port: int | None, grpc_port: int | None) -> None:
    """Before anything loads: a busy port is one line in a second, not a traceback after the models loaded."""
    host = cfg.serving.host
    http = cfg.serving.http_port if http_port is None else http_port
    check_port_free(host, http, "for HTTP", "choose another serving.http_port or --http-port (0 picks a free one)")
    grpc = cfg.serving.grpc_port if grpc_port is None else grpc_port
    if grpc is not None and grpc == http != 0:
        raise ConfigError(f"HTTP and gRPC are both set to port {http}; give them different ports")
    if grpc is not None:
        check_port_free(host, grpc, "for gRPC", "choose another serving.grpc_port or --grpc-port (0 picks a free "
                        "one), or set serving.grpc_port: null to serve no gRPC")


def main(argv: list[str] | None = None) -> int:
    parser = _Parser(prog="genie-serve", description="Serve a registered model over OpenAI HTTP and gRPC.")
    parser.add_argument("--config", default="configs/llm.yaml", help="YAML config (default: configs/llm.yaml)")
    parser.add_argument("--http-port", type=_port, help="override serving.http_port (0: a free port)")
    parser.add_argument("--grpc-port", type=_port, help="override serving.grpc_port (0: a free port)")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    try:
        cfg = load_config(args.config)
        check_ports(cfg, args.http_port, args.grpc_port)
        from .app import serve

        asyncio.run(serve(cfg, args.http_port, args.grpc_port, announce=lambda line: print(line, flush=True)))
    except GenieError as exc:
        print(f"genie-serve: {exc}", file=sys.stderr)
        return 2 if type(exc).__name__ == "ConfigError" else 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
