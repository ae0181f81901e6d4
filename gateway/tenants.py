"""Tenants of the gateway: who may call which method, under which quotas.

The tenants file is TOML (read with the stdlib ``tomllib``). One table per
tenant, keyed by the tenant id (1..64 characters of ``[A-Za-z0-9._-]``)::

    [tenants.bank-x]
    priority = "critical"              # critical | normal | batch (default normal)
    api_key_sha256 = ["<64 hex>"]      # SHA-256 of each API key; two during a rotation
    methods = ["Verify"]               # Enroll EnrollBatch Delete Verify Identify GetSubject Stats

    [tenants.bank-x.quotas.Verify]     # optional; a method without a table is unlimited
    rate = 50                          # token bucket refill, calls per second
    burst = 100                        # bucket size (default: rate rounded up)
    concurrency = 16                   # calls of this method in flight at once
    daily = 200000                     # calls per UTC day (resets at 00:00 UTC)
    shadow = false                     # true: count and log would-be rejections, admit anyway

Every limit of a quota table is optional. Unknown keys, unknown methods, a
quota for a method the tenant may not call, a malformed hash and one key hash
shared by two tenants are errors. Keys are never stored: only their
SHA-256 hex digests. ``python -m gateway.tenants hash-key`` hashes a key read
from stdin; ``python -m gateway.tenants check FILE`` validates a file.

`TenantRegistry` looks tenants up by key hash in O(1) and reloads the file
when it changes (mtime poll) or when `reload` is called (the gateway calls it
on SIGHUP, `gateway.app`); a broken file is logged and the last good
configuration stays in force. Where the file is and how often it is polled:
``TUNGGAL_GATEWAY_TENANTS_FILE`` and ``_TENANTS_POLL_S``
(`tunggal.settings.GatewaySettings`). docs/tenants.md has the details.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import getpass
import hashlib
import math
import re
import sys
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal, cast, get_args

import structlog
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

_log = structlog.get_logger("tunggal.gateway.tenants")

MethodName = Literal["Enroll", "EnrollBatch", "Delete", "Verify", "Identify", "GetSubject", "Stats"]
METHODS: frozenset[str] = frozenset(get_args(MethodName))
"""Short names of the tunggal.v1.Matcher methods a tenant may be allowed."""

_HEX64 = re.compile(r"^[0-9a-f]{64}$")


class Priority(StrEnum):
    """Priority class of a tenant's calls; under overload batch is shed first."""

    CRITICAL = "critical"
    NORMAL = "normal"
    BATCH = "batch"

    @property
    def rank(self) -> int:
        """0 for critical, 1 for normal, 2 for batch (lower goes first)."""
        return _RANKS[self]


_RANKS = {Priority.CRITICAL: 0, Priority.NORMAL: 1, Priority.BATCH: 2}


class TenantsFileError(Exception):
    """The tenants file cannot be read or is invalid (the message says why)."""


class QuotaSpec(BaseModel):
    """The limits on one method of one tenant; an unset limit does not apply."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    rate: float | None = Field(None, gt=0, allow_inf_nan=False, description="Calls per second.")
    burst: int | None = Field(None, ge=1, description="Token bucket size.")
    concurrency: int | None = Field(None, ge=1, description="Calls in flight at once.")
    daily: int | None = Field(None, ge=1, description="Calls per UTC day.")
    shadow: bool = Field(False, description="Count and log would-be rejections, admit anyway.")

    @model_validator(mode="after")
    def _burst_needs_rate(self) -> QuotaSpec:
        if self.burst is not None and self.rate is None:
            raise ValueError("burst needs a rate")
        return self

    @property
    def bucket_size(self) -> int:
        """The token bucket size: `burst`, or the rate rounded up."""
        if self.burst is not None:
            return self.burst
        return max(1, math.ceil(self.rate or 1.0))


class Tenant(BaseModel):
    """One tenant: its keys (hashed), allowed methods, quotas and priority."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(pattern=r"^[A-Za-z0-9._-]{1,64}$")
    api_key_sha256: tuple[str, ...] = Field(min_length=1)
    methods: frozenset[MethodName] = Field(min_length=1)
    priority: Priority = Priority.NORMAL
    quotas: Mapping[MethodName, QuotaSpec] = Field(default_factory=dict)

    @field_validator("api_key_sha256")
    @classmethod
    def _hashes(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        normalised = tuple(h.strip().lower() for h in value)
        for i, digest in enumerate(normalised):
            if not _HEX64.match(digest):
                # Never echo the value: it may be a key pasted by mistake.
                raise ValueError(f"entry {i} is not a SHA-256 hex digest (64 hex characters)")
        return normalised

    @model_validator(mode="after")
    def _quotas_for_allowed(self) -> Tenant:
        extra = sorted(set(self.quotas) - set(self.methods))
        if extra:
            raise ValueError(f"quotas for methods not in `methods`: {', '.join(extra)}")
        return self

    def may_call(self, method: str) -> bool:
        """Whether the tenant may call the Matcher method with this short name."""
        return method in self.methods

    def quota(self, method: str) -> QuotaSpec | None:
        """The quota of `method`, or None when it is unlimited."""
        return self.quotas.get(cast(MethodName, method))


@dataclass(frozen=True, slots=True)
class TenantsConfig:
    """A validated tenants file: tenants by id and by API key hash."""

    tenants: Mapping[str, Tenant]
    by_key_hash: Mapping[str, Tenant]

    @classmethod
    def from_tenants(cls, tenants: Sequence[Tenant]) -> TenantsConfig:
        """Index `tenants`; raises TenantsFileError on a duplicate id or key hash."""
        by_id: dict[str, Tenant] = {}
        by_hash: dict[str, Tenant] = {}
        for tenant in tenants:
            if tenant.id in by_id:
                raise TenantsFileError(f"tenant {tenant.id} is defined twice")
            by_id[tenant.id] = tenant
            for digest in tenant.api_key_sha256:
                other = by_hash.get(digest)
                if other is not None:
                    raise TenantsFileError(
                        f"tenants {other.id} and {tenant.id} share an API key hash"
                    )
                by_hash[digest] = tenant
        return cls(tenants=by_id, by_key_hash=by_hash)


def hash_key(api_key: str) -> str:
    """The SHA-256 hex digest under which `api_key` is stored."""
    return hashlib.sha256(api_key.encode("utf-8")).hexdigest()


def _validation_message(exc: ValidationError) -> str:
    """A one-line summary of `exc` that never quotes the input values."""
    parts = []
    for err in exc.errors(include_input=False, include_url=False):
        where = ".".join(str(p) for p in err["loc"]) or "(root)"
        parts.append(f"{where}: {err['msg']}")
    return "; ".join(parts)


def parse_tenants(data: Mapping[str, Any]) -> TenantsConfig:
    """Validate a parsed tenants document; raises TenantsFileError."""
    unknown = sorted(set(data) - {"tenants"})
    if unknown:
        raise TenantsFileError(f"unknown top-level keys: {', '.join(unknown)}")
    tables = data.get("tenants", {})
    if not isinstance(tables, dict):
        raise TenantsFileError("`tenants` must be a table of tenant tables")
    tenants = []
    for tenant_id, table in tables.items():
        if not isinstance(table, dict):
            raise TenantsFileError(f"tenants.{tenant_id} must be a table")
        if "id" in table:
            raise TenantsFileError(f"tenants.{tenant_id}: the id is the table name, drop `id`")
        try:
            tenants.append(Tenant.model_validate({**table, "id": tenant_id}))
        except ValidationError as exc:
            raise TenantsFileError(f"tenants.{tenant_id}: {_validation_message(exc)}") from None
    return TenantsConfig.from_tenants(tenants)


def load_tenants(path: Path) -> TenantsConfig:
    """Read and validate the tenants file at `path`; raises TenantsFileError."""
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except OSError as exc:
        raise TenantsFileError(f"cannot read {path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise TenantsFileError(f"{path} is not valid TOML: {exc}") from None
    return parse_tenants(data)


def _toml_string(value: str) -> str:
    """`value` as a TOML basic string."""
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def dump_tenants(tenants: Sequence[Tenant]) -> str:
    """The TOML text of a tenants file holding `tenants` (what `load_tenants` reads back)."""
    lines: list[str] = []
    for tenant in tenants:
        lines.append(f"[tenants.{_toml_string(tenant.id)}]")
        lines.append(f"priority = {_toml_string(tenant.priority.value)}")
        hashes = ", ".join(_toml_string(h) for h in tenant.api_key_sha256)
        lines.append(f"api_key_sha256 = [{hashes}]")
        lines.append(f"methods = [{', '.join(_toml_string(m) for m in sorted(tenant.methods))}]")
        lines.append("")
        for method, spec in sorted(tenant.quotas.items()):
            lines.append(f"[tenants.{_toml_string(tenant.id)}.quotas.{method}]")
            for name, value in spec.model_dump(exclude_none=True).items():
                if isinstance(value, bool):
                    lines.append(f"{name} = {'true' if value else 'false'}")
                else:
                    lines.append(f"{name} = {value!r}")
            lines.append("")
    return "\n".join(lines)


def _file_signature(path: Path) -> tuple[int, int, int] | None:
    """What changes when the file is edited or replaced; None if it is missing."""
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


class TenantRegistry:
    """The tenants in force; looks them up by API key, reloads the file on change.

    Use from one asyncio event loop. `reload` keeps the last good configuration
    when the file is broken, and logs why (never a key or a key hash).
    """

    def __init__(self, config: TenantsConfig, path: Path | None = None) -> None:
        self._config = config
        self._path = path
        self._signature = _file_signature(path) if path is not None else None
        self._generation = 1
        self._task: asyncio.Task[None] | None = None

    @classmethod
    def from_file(cls, path: Path | str) -> TenantRegistry:
        """Load `path` (raises TenantsFileError when broken) and remember it for reloads."""
        path = Path(path)
        config = load_tenants(path)
        registry = cls(config, path)
        _log.info("tenants_loaded", path=str(path), tenants=sorted(config.tenants), generation=1)
        return registry

    @property
    def config(self) -> TenantsConfig:
        """The configuration now in force."""
        return self._config

    @property
    def generation(self) -> int:
        """1 at start, plus one per successful reload."""
        return self._generation

    def authenticate(self, api_key: str) -> Tenant | None:
        """The tenant holding `api_key`, or None; O(1)."""
        return self._config.by_key_hash.get(hash_key(api_key))

    def get(self, tenant_id: str) -> Tenant | None:
        """The tenant with this id, or None."""
        return self._config.tenants.get(tenant_id)

    def reload(self) -> bool:
        """Re-read the file now; True if a new configuration is in force."""
        if self._path is None:
            return False
        self._signature = _file_signature(self._path)
        try:
            config = load_tenants(self._path)
        except TenantsFileError as exc:
            _log.error(
                "tenants_reload_failed",
                path=str(self._path),
                error=str(exc),
                kept_generation=self._generation,
            )
            return False
        self._config = config
        self._generation += 1
        _log.info(
            "tenants_loaded",
            path=str(self._path),
            tenants=sorted(config.tenants),
            generation=self._generation,
        )
        return True

    def reload_if_changed(self) -> bool:
        """Reload when the file's mtime, size or inode changed since the last read."""
        if self._path is None or _file_signature(self._path) == self._signature:
            return False
        return self.reload()

    async def watch(self, interval_s: float) -> None:
        """Poll the file every `interval_s` seconds, reload it on change; runs until cancelled."""
        while True:
            await asyncio.sleep(interval_s)
            self.reload_if_changed()

    def start(self, interval_s: float = 2.0) -> None:
        """Start the mtime watcher task in the running event loop."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self.watch(interval_s), name="tenants-watch"
            )

    async def stop(self) -> None:
        """Stop the watcher."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: ``hash-key`` (key on stdin) prints its hash; ``check FILE`` validates a file."""
    parser = argparse.ArgumentParser(
        prog="python -m gateway.tenants", description="Tunggal tenants file tools."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("hash-key", help="print the SHA-256 hex of an API key read from stdin")
    check = sub.add_parser("check", help="validate a tenants file")
    check.add_argument("file", type=Path)
    args = parser.parse_args(argv)
    if args.command == "hash-key":
        key = getpass.getpass("API key: ") if sys.stdin.isatty() else sys.stdin.readline()
        key = key.rstrip("\r\n")
        if not key:
            print("error: empty key", file=sys.stderr)
            return 2
        print(hash_key(key))
        return 0
    try:
        config = load_tenants(args.file)
    except TenantsFileError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for tenant in config.tenants.values():
        methods = ",".join(sorted(tenant.methods))
        print(f"{tenant.id}: priority={tenant.priority} methods={methods}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
