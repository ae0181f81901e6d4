"""The gateway's command line: ``tunggal-gateway`` or ``python -m gateway.server``.

Run: ``tunggal-gateway --tenants deploy/tenants.demo.toml --nodes
node-0=127.0.0.1:50052,node-1=127.0.0.1:50053``. Every setting comes from
`tunggal.settings.GatewaySettings` (``TUNGGAL_GATEWAY_*`` and the shared
``TUNGGAL_*``); each flag overrides its variable. The gateway refuses to
start without a tenants file (``--tenants`` or ``TUNGGAL_GATEWAY_TENANTS_FILE``,
docs/tenants.md) unless ``--no-auth`` / ``TUNGGAL_GATEWAY_AUTH=off`` is given:
no keys, tenants or quotas, for local experiments on 127.0.0.1 only
(`gateway.app.check_gateway_exposure`). A start that fails exits 1 with one
line on stderr; a usage error exits 2. The process itself is `gateway.app.run`.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import structlog
from pydantic import ValidationError

from gateway.app import NO_TENANTS_MESSAGE, run
from gateway.tenants import TenantsFileError
from shard.shardmap import parse_nodes
from tunggal.exposure import UnprotectedBindError
from tunggal.logs import configure_logging
from tunggal.settings import GatewaySettings

_log = structlog.get_logger("gateway")


def build_parser() -> argparse.ArgumentParser:
    """Command-line flags; each overrides its TUNGGAL_* environment setting."""
    parser = argparse.ArgumentParser(
        prog="tunggal-gateway",
        description="Tunggal gateway: serves tunggal.v1.Matcher over the matcher nodes.",
    )
    parser.add_argument("--host", help="interface to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port to listen on (default 50051)")
    parser.add_argument(
        "--nodes", help="matcher nodes, comma-separated name=host:port (node-0=127.0.0.1:50052)"
    )
    parser.add_argument(
        "--log-level", choices=("debug", "info", "warning", "error"), help="log level"
    )
    parser.add_argument("--dim", type=int, help="template dimension (default 128)")
    parser.add_argument("--grace", type=float, help="drain seconds on SIGTERM (default 10)")
    parser.add_argument(
        "--tenants",
        type=Path,
        help="tenants TOML file (TUNGGAL_GATEWAY_TENANTS_FILE); required unless --no-auth",
    )
    parser.add_argument(
        "--no-auth",
        action="store_true",
        default=None,
        help="serve without API keys, tenants or quotas (TUNGGAL_GATEWAY_AUTH=off): "
        "for local experiments only",
    )
    parser.add_argument(
        "--metrics-port", type=int, help="port of /metrics (default 9464; 0 turns it off)"
    )
    parser.add_argument("--metrics-host", help="interface of /metrics (default 127.0.0.1)")
    return parser


def _overrides(pairs: Sequence[tuple[str, object]]) -> dict[str, Any]:
    return {key: value for key, value in pairs if value is not None}


def settings_from_args(argv: Sequence[str] | None = None) -> GatewaySettings:
    """GatewaySettings from the environment, overridden by the flags in `argv`.

    Exits with a usage error when a setting is invalid, or authentication is
    on and no tenants file is given.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = GatewaySettings(
            **_overrides(
                (
                    ("host", args.host),
                    ("port", args.port),
                    ("nodes", args.nodes),
                    ("log_level", args.log_level),
                    ("dim", args.dim),
                    ("grace_s", args.grace),
                    ("tenants_file", args.tenants),
                    ("auth", False if args.no_auth else None),
                    ("metrics_port", args.metrics_port),
                    ("metrics_host", args.metrics_host),
                )
            )
        )
        parse_nodes(settings.nodes)
    except (ValidationError, ValueError) as exc:
        parser.error(str(exc))
    if settings.auth and settings.tenants_file is None:
        parser.error(NO_TENANTS_MESSAGE)
    return settings


def main(argv: Sequence[str] | None = None) -> None:
    """Console entry point (``tunggal-gateway``)."""
    settings = settings_from_args(argv)
    configure_logging(settings.log_level, service="gateway", cache=True)
    try:
        asyncio.run(run(settings))
    except (UnprotectedBindError, TenantsFileError, OSError) as exc:
        _log.error("gateway_start_failed", error=str(exc))
        print(f"tunggal-gateway: error: {exc}", file=sys.stderr)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
