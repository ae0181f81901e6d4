"""The demo gallery of the local cluster: seeding it and showing real answers.

Every call names its tenant (deploy/tenants.demo.toml): the registry enrolls,
ops reads Stats, the bank verifies (1:1) and the agency identifies (1:N).
`DemoClients` holds one client per demo tenant, each sending its own key.
"""

from __future__ import annotations

import functools
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self, TypeVar

import grpc
import numpy as np

from tunggal.client import TunggalClient, bearer
from tunggal_tools.synthetic import FaceModel, subject_id

DEMO_KEYS: Mapping[str, str] = {
    "bank-x": "demo-key-bank-x",
    "agency": "demo-key-agency",
    "registry": "demo-key-registry",
    "ops": "demo-key-ops",
}
"""API keys of deploy/tenants.demo.toml, by tenant id. Public: demo use only."""

DEMO_MODEL = FaceModel(dim=128, structure=0.7, rank=64, genuine=0.68, seed=7)
_BATCH = 1000
_RETRY_CODES = frozenset({grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAVAILABLE})
T = TypeVar("T")

DEMO_ROLES: Mapping[str, str] = {
    "registry": "EnrollBatch (seeding the gallery)",
    "ops": "Stats",
    "bank-x": "Verify (1:1)",
    "agency": "Identify (1:N)",
}
"""Which demo tenant makes which of the demo's calls."""


@dataclass
class DemoClients:
    """One client per demo tenant, each sending its tenant's key."""

    registry: TunggalClient
    ops: TunggalClient
    bank: TunggalClient
    agency: TunggalClient

    @classmethod
    def connect(
        cls, address: str, timeout: float | None = 30.0, keys: Mapping[str, str] = DEMO_KEYS
    ) -> DemoClients:
        """Clients of the gateway at `address` for the registry, ops, bank-x and agency."""

        def client(tenant: str) -> TunggalClient:
            return TunggalClient(address, timeout=timeout, metadata=bearer(keys[tenant]))

        return cls(client("registry"), client("ops"), client("bank-x"), client("agency"))

    def close(self) -> None:
        """Close the four clients' channels."""
        for client in (self.registry, self.ops, self.bank, self.agency):
            client.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def pushback_ms(err: grpc.RpcError) -> int | None:
    """The ``grpc-retry-pushback-ms`` trailer of a failed call, if any."""
    trailers: Any = getattr(err, "trailing_metadata", lambda: None)() or ()
    for key, value in trailers:
        if key == "grpc-retry-pushback-ms":
            try:
                return max(0, int(value))
            except ValueError:
                return None
    return None


def with_pushback(call: Callable[[], T], attempts: int = 20) -> T:
    """Run `call`, retrying RESOURCE_EXHAUSTED/UNAVAILABLE after the gateway's pushback."""
    for attempt in range(attempts):
        try:
            return call()
        except grpc.RpcError as err:
            code: Any = getattr(err, "code", lambda: None)()
            if code not in _RETRY_CODES or attempt == attempts - 1:
                raise
            wait_ms = pushback_ms(err)
            time.sleep(min(30.0, (wait_ms if wait_ms is not None else 100 * 2**attempt) / 1000))
    raise AssertionError("unreachable")  # pragma: no cover


def seed(
    client: TunggalClient,
    subjects: int,
    model: FaceModel = DEMO_MODEL,
    *,
    stats: TunggalClient | None = None,
    quiet: bool = False,
) -> int:
    """Enroll identities 0..subjects-1 (capture 0) not yet stored; returns how many.

    `client` makes the EnrollBatch calls, `stats` (default: `client`) the
    Stats call. Idempotent: every item carries a request id derived from the
    identity, so an interrupted seeding resumes without duplicates. Quota
    and overload rejections are retried after the gateway's pushback.
    """
    stats_client = stats or client
    stored = sum(n.templates for n in with_pushback(stats_client.stats))
    if stored >= subjects:
        return 0
    started = time.monotonic()
    done = 0
    for lo in range(0, subjects, _BATCH):
        ids = list(range(lo, min(subjects, lo + _BATCH)))
        results = with_pushback(
            functools.partial(
                client.enroll_batch,
                [subject_id(i) for i in ids],
                model.samples(ids, 0),
                mode="replace",
                request_ids=[f"demo-{model.seed}-{i}" for i in ids],
                timeout=120,
            )
        )
        failed = [r for r in results if not r.ok]
        if failed:
            raise RuntimeError(f"demo enrollment failed: {failed[0].code.name} {failed[0].message}")
        done += len(ids)
        if not quiet:
            rate = done / max(time.monotonic() - started, 1e-9)
            sys.stdout.write(
                f"\r  enrolling demo gallery: {done:>7,}/{subjects:,} subjects "
                f"({rate:,.0f}/s, {100 * done / subjects:5.1f} %)"
            )
            sys.stdout.flush()
    if not quiet:
        sys.stdout.write("\n")
    return done


def show(
    verifier: TunggalClient,
    identifier: TunggalClient,
    subjects: int,
    model: FaceModel = DEMO_MODEL,
) -> None:
    """Print a few verify (by `verifier`) and identify (by `identifier`) answers."""
    rng = np.random.default_rng()
    a, b = (int(x) for x in rng.choice(subjects, size=2, replace=False))
    probe_a = model.samples([a], 1)[0]  # a new capture of person a
    stranger = model.samples([10**9 + int(rng.integers(10**6))], 1)[0]

    def timed(fn: Callable[..., T], *args: Any, **kwargs: Any) -> tuple[T, float]:
        t0 = time.perf_counter()
        out = fn(*args, **kwargs)
        return out, (time.perf_counter() - t0) * 1000

    print("\n1:1 verify (as tenant bank-x)")
    res, ms = timed(verifier.verify, subject_id(a), probe_a)
    print(
        f"  new photo of {subject_id(a)} vs {subject_id(a)}: score {res.score:.3f} "
        f"-> {'MATCH' if res.match else 'no match'} (threshold {res.threshold:.2f}, {ms:.1f} ms)"
    )
    res, ms = timed(verifier.verify, subject_id(b), probe_a)
    print(
        f"  new photo of {subject_id(a)} vs {subject_id(b)}: score {res.score:.3f} "
        f"-> {'MATCH' if res.match else 'no match'} (threshold {res.threshold:.2f}, {ms:.1f} ms)"
    )
    threshold = res.threshold
    print("\n1:N identify, top 3 (as tenant agency)")
    for label, probe in ((f"new photo of {subject_id(a)}", probe_a), ("a stranger", stranger)):
        found, ms = timed(identifier.identify, probe, k=3)
        print(
            f"  {label}: {found.shards_answered}/{found.shards_total} shards, {ms:.1f} ms"
            + (" (PARTIAL)" if found.partial else "")
        )
        for rank, c in enumerate(found.candidates, 1):
            verdict = "MATCH" if c.score >= threshold else "below threshold"
            print(f"    {rank}. {c.subject_id}  score {c.score:.3f}  on {c.shard}  {verdict}")
