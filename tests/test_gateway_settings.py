"""Every gateway setting lives in GatewaySettings and keeps its variable's name."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from gateway.server import settings_from_args
from tunggal.settings import GatewaySettings

# Each variable of the tenants, metrics and overload settings (README.md,
# docs/tenants.md), a value other than its default, and the field it sets.
VARIABLES: list[tuple[str, str, str, object]] = [
    ("TUNGGAL_GATEWAY_TENANTS_FILE", "/etc/t.toml", "tenants_file", Path("/etc/t.toml")),
    ("TUNGGAL_GATEWAY_TENANTS_POLL_S", "7", "tenants_poll_s", 7.0),
    ("TUNGGAL_GATEWAY_AUTH", "off", "auth", False),
    ("TUNGGAL_GATEWAY_ALLOW_UNPROTECTED_NETWORK", "true", "allow_unprotected_network", True),
    ("TUNGGAL_GATEWAY_METRICS_PORT", "9999", "metrics_port", 9999),
    ("TUNGGAL_GATEWAY_METRICS_HOST", "0.0.0.0", "metrics_host", "0.0.0.0"),
    ("TUNGGAL_GATEWAY_OVERLOAD_INITIAL_LIMIT", "8", "overload_initial_limit", 8),
    ("TUNGGAL_GATEWAY_OVERLOAD_MIN_LIMIT", "2", "overload_min_limit", 2),
    ("TUNGGAL_GATEWAY_OVERLOAD_MAX_LIMIT", "16", "overload_max_limit", 16),
    ("TUNGGAL_GATEWAY_OVERLOAD_MAX_QUEUE", "9", "overload_max_queue", 9),
    ("TUNGGAL_GATEWAY_OVERLOAD_MAX_QUEUE_WAIT_S", "3", "overload_max_queue_wait_s", 3.0),
    ("TUNGGAL_GATEWAY_OVERLOAD_BATCH_QUEUE_SHARE", "0.25", "overload_batch_queue_share", 0.25),
    ("TUNGGAL_GATEWAY_OVERLOAD_NORMAL_QUEUE_SHARE", "0.75", "overload_normal_queue_share", 0.75),
    ("TUNGGAL_GATEWAY_OVERLOAD_LATENCY_TOLERANCE", "3", "overload_latency_tolerance", 3.0),
    ("TUNGGAL_GATEWAY_OVERLOAD_LATENCY_SLACK_S", "0.5", "overload_latency_slack_s", 0.5),
    ("TUNGGAL_GATEWAY_OVERLOAD_BACKOFF", "0.5", "overload_backoff", 0.5),
    ("TUNGGAL_GATEWAY_OVERLOAD_INITIAL_SERVICE_S", "0.2", "overload_initial_service_s", 0.2),
    ("TUNGGAL_GATEWAY_OVERLOAD_DEADLINE_MARGIN_S", "0.2", "overload_deadline_margin_s", 0.2),
    (
        "TUNGGAL_GATEWAY_OVERLOAD_MAX_STREAMS_PER_CONNECTION",
        "12",
        "overload_max_streams_per_connection",
        12,
    ),
]


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for variable, *_ in VARIABLES:
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.delenv("TUNGGAL_INTERNAL_SECRET", raising=False)


def test_each_variable_sets_its_field(monkeypatch: pytest.MonkeyPatch) -> None:
    defaults = GatewaySettings()
    for variable, text, field, value in VARIABLES:
        assert getattr(defaults, field) != value, field
        monkeypatch.setenv(variable, text)
    monkeypatch.setenv("TUNGGAL_INTERNAL_SECRET", "s3cret-of-the-cluster")
    settings = GatewaySettings()
    for _, _, field, value in VARIABLES:
        assert getattr(settings, field) == value, field
    assert settings.internal_secret is not None
    assert settings.internal_secret.get_secret_value() == "s3cret-of-the-cluster"
    assert "s3cret" not in repr(settings)


def test_flags_override_the_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TUNGGAL_GATEWAY_METRICS_PORT", "9999")
    monkeypatch.setenv("TUNGGAL_GATEWAY_TENANTS_FILE", "/etc/t.toml")
    settings = settings_from_args(
        ["--metrics-port", "0", "--metrics-host", "0.0.0.0", "--tenants", "/srv/t.toml"]
    )
    assert (settings.metrics_port, settings.metrics_host) == (0, "0.0.0.0")
    assert settings.tenants_file == Path("/srv/t.toml") and settings.auth
    assert not settings_from_args(["--no-auth"]).auth


@pytest.mark.parametrize(
    ("low", "initial", "high"),
    [(8, 4, 16), (2, 32, 16)],
    ids=["initial below min", "initial above max"],
)
def test_overload_limits_must_be_ordered(low: int, initial: int, high: int) -> None:
    with pytest.raises(ValidationError, match="overload_min_limit <= overload_initial_limit"):
        GatewaySettings(
            overload_min_limit=low, overload_initial_limit=initial, overload_max_limit=high
        )
