"""Tenants file parsing, key hashing, the registry's reloads and the CLI."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest

from gateway.tenants import (
    Priority,
    TenantRegistry,
    TenantsFileError,
    hash_key,
    load_tenants,
    main,
    parse_tenants,
)
from tunggal_tools.demo import DEMO_KEYS

REPO = Path(__file__).resolve().parent.parent
DEMO_FILE = REPO / "deploy" / "tenants.demo.toml"
KEY = "s3cret-key-of-alpha"


def tenant_toml(tenant_id: str, key: str, methods: str, extra: str = "") -> str:
    return (
        f"[tenants.{tenant_id}]\n"
        f'api_key_sha256 = ["{hash_key(key)}"]\n'
        f"methods = [{methods}]\n{extra}\n"
    )


def events(buf: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in buf.getvalue().splitlines() if line.strip()]


def bump_mtime(path: Path) -> None:
    """Make sure a rewrite is visible to an mtime poll even on coarse clocks."""
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 2_000_000_000))


# --- format -------------------------------------------------------------------


def test_hash_key_is_sha256_hex() -> None:
    assert hash_key("abc") == hashlib.sha256(b"abc").hexdigest()
    assert len(hash_key("x")) == 64


def test_demo_file_matches_demo_keys() -> None:
    config = load_tenants(DEMO_FILE)
    assert set(config.tenants) == set(DEMO_KEYS) == {"bank-x", "agency", "registry", "ops"}
    for tenant_id, key in DEMO_KEYS.items():
        assert config.by_key_hash[hash_key(key)].id == tenant_id
    bank, agency = config.tenants["bank-x"], config.tenants["agency"]
    registry, ops = config.tenants["registry"], config.tenants["ops"]
    assert bank.methods == {"Verify"}
    assert agency.methods == {"Identify", "Verify"}
    assert registry.methods == {"Enroll", "EnrollBatch", "Delete", "GetSubject"}
    assert ops.methods == {"Stats"}
    assert not bank.may_call("Identify")
    assert registry.priority is Priority.BATCH
    identify = agency.quota("Identify")
    assert identify is not None and identify.rate == 50 and identify.bucket_size == 100
    assert agency.quota("Stats") is None
    enroll = registry.quota("Enroll")
    assert enroll is not None and enroll.shadow


def test_defaults() -> None:
    config = parse_tenants(
        {
            "tenants": {
                "t": {
                    "api_key_sha256": [hash_key("k").upper()],
                    "methods": ["Verify"],
                    "quotas": {"Verify": {"rate": 2.5}},
                }
            }
        }
    )
    tenant = config.tenants["t"]
    assert tenant.priority is Priority.NORMAL
    assert tenant.api_key_sha256 == (hash_key("k"),)  # normalised to lower case
    spec = tenant.quota("Verify")
    assert spec is not None and spec.bucket_size == 3 and not spec.shadow


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"tenants": {"t": {"api_key_sha256": ["0" * 64], "methods": ["Fly"]}}}, "methods"),
        (
            {"tenants": {"t": {"api_key_sha256": ["0" * 64], "methods": ["Verify"], "x": 1}}},
            "x: Extra inputs",
        ),
        (
            {
                "tenants": {
                    "t": {
                        "api_key_sha256": ["0" * 64],
                        "methods": ["Verify"],
                        "quotas": {"Identify": {"rate": 1}},
                    }
                }
            },
            "quotas for methods not in `methods`: Identify",
        ),
        (
            {
                "tenants": {
                    "t": {
                        "api_key_sha256": ["0" * 64],
                        "methods": ["Verify"],
                        "quotas": {"Verify": {"burst": 3}},
                    }
                }
            },
            "burst needs a rate",
        ),
        (
            {
                "tenants": {
                    "t": {
                        "api_key_sha256": ["0" * 64],
                        "methods": ["Verify"],
                        "quotas": {"Verify": {"rate": -1}},
                    }
                }
            },
            "rate",
        ),
        ({"tenants": {"t": {"api_key_sha256": [], "methods": ["Verify"]}}}, "api_key_sha256"),
        ({"tenants": {"t": {"api_key_sha256": ["0" * 64], "methods": []}}}, "methods"),
        (
            {"tenants": {"t": {"id": "u", "api_key_sha256": ["0" * 64], "methods": ["Stats"]}}},
            "drop `id`",
        ),
        (
            {"tenants": {"bad id": {"api_key_sha256": ["0" * 64], "methods": ["Stats"]}}},
            "id",
        ),
        (
            {
                "tenants": {
                    "a": {"api_key_sha256": ["0" * 64], "methods": ["Stats"]},
                    "b": {"api_key_sha256": ["0" * 64], "methods": ["Stats"]},
                }
            },
            "tenants a and b share an API key hash",
        ),
        ({"tenant": {}}, "unknown top-level keys: tenant"),
    ],
)
def test_invalid_documents(body: dict[str, Any], message: str) -> None:
    with pytest.raises(TenantsFileError) as info:
        parse_tenants(body)
    assert message in str(info.value)


def test_bad_hash_is_not_echoed() -> None:
    pasted_key = "this-is-a-raw-key-pasted-by-mistake"
    body = {"tenants": {"t": {"api_key_sha256": [pasted_key], "methods": ["Verify"]}}}
    with pytest.raises(TenantsFileError) as info:
        parse_tenants(body)
    assert "entry 0 is not a SHA-256 hex digest" in str(info.value)
    assert pasted_key not in str(info.value)


def test_unreadable_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(TenantsFileError, match="cannot read"):
        load_tenants(tmp_path / "missing.toml")
    broken = tmp_path / "broken.toml"
    broken.write_text("[tenants.a\n")
    with pytest.raises(TenantsFileError, match="not valid TOML"):
        load_tenants(broken)


# --- registry -------------------------------------------------------------------------


def test_registry_authenticates_in_constant_lookups(tmp_path: Path) -> None:
    path = tmp_path / "tenants.toml"
    path.write_text(tenant_toml("alpha", KEY, '"Verify"'))
    registry = TenantRegistry.from_file(path)
    tenant = registry.authenticate(KEY)
    assert tenant is not None and tenant.id == "alpha"
    assert registry.authenticate("wrong") is None
    assert registry.get("alpha") is tenant
    assert registry.generation == 1


def test_reload_on_change_and_keep_last_good(tmp_path: Path, log_buffer: io.StringIO) -> None:
    path = tmp_path / "tenants.toml"
    path.write_text(tenant_toml("alpha", KEY, '"Verify"'))
    registry = TenantRegistry.from_file(path)
    assert not registry.reload_if_changed()  # unchanged

    path.write_text(tenant_toml("alpha", KEY, '"Verify", "Identify"'))
    bump_mtime(path)
    assert registry.reload_if_changed()
    tenant = registry.authenticate(KEY)
    assert tenant is not None and tenant.may_call("Identify")
    assert registry.generation == 2

    # A broken file: logged with the reason, last good config stays.
    path.write_text(tenant_toml("alpha", KEY, '"Verify", "Teleport"'))
    bump_mtime(path)
    assert not registry.reload_if_changed()
    assert not registry.reload_if_changed()  # not retried until the file changes again
    tenant = registry.authenticate(KEY)
    assert tenant is not None and tenant.may_call("Identify")
    assert registry.generation == 2
    failures = [e for e in events(log_buffer) if e["event"] == "tenants_reload_failed"]
    assert len(failures) == 1
    assert "tenants.alpha" in failures[0]["error"] and "methods" in failures[0]["error"]
    assert failures[0]["kept_generation"] == 2

    # The file removed: also kept.
    path.unlink()
    assert not registry.reload_if_changed()
    assert registry.authenticate(KEY) is not None

    text = log_buffer.getvalue()
    assert KEY not in text and hash_key(KEY) not in text


def test_watcher_reloads_a_changed_file(tmp_path: Path) -> None:
    """The poll; SIGHUP is the gateway process's (test_cluster_auth.py)."""
    path = tmp_path / "tenants.toml"
    path.write_text(tenant_toml("alpha", KEY, '"Verify"'))
    registry = TenantRegistry.from_file(path)

    async def scenario() -> None:
        registry.start(0.01)
        try:
            path.write_text(tenant_toml("alpha", KEY, '"Stats"'))
            bump_mtime(path)
            for _ in range(300):
                tenant = registry.authenticate(KEY)
                if tenant is not None and tenant.may_call("Stats"):
                    break
                await asyncio.sleep(0.01)
            else:
                pytest.fail("the watcher did not reload the file")
        finally:
            await registry.stop()

    asyncio.run(asyncio.wait_for(scenario(), timeout=10))


# --- CLI --------------------------------------------------------------------------------


def test_cli_hash_key_and_check(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO("demo-key-ops\n"))
    assert main(["hash-key"]) == 0
    assert capsys.readouterr().out.strip() == hash_key("demo-key-ops")

    monkeypatch.setattr(sys, "stdin", io.StringIO("\n"))
    assert main(["hash-key"]) == 2

    assert main(["check", str(DEMO_FILE)]) == 0
    assert "bank-x: priority=critical methods=Verify" in capsys.readouterr().out

    bad = tmp_path / "bad.toml"
    bad.write_text("tenants = 3\n")
    assert main(["check", str(bad)]) == 1
    assert "error:" in capsys.readouterr().err
