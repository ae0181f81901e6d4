"""The demo gallery of the local cluster: seeding it and showing real answers."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np

from tunggal.client import TunggalClient
from tunggal.synthetic import FaceModel, subject_id

DEMO_MODEL = FaceModel(dim=128, structure=0.7, rank=64, genuine=0.68, seed=7)
_BATCH = 1000
T = TypeVar("T")


def seed(client: TunggalClient, subjects: int, model: FaceModel = DEMO_MODEL) -> int:
    """Enroll identities 0..subjects-1 (capture 0) not yet stored; returns how many.

    Idempotent: every item carries a request id derived from the identity, so
    an interrupted seeding resumes without duplicates.
    """
    stored = sum(n.templates for n in client.stats())
    if stored >= subjects:
        return 0
    started = time.monotonic()
    done = 0
    for lo in range(0, subjects, _BATCH):
        ids = list(range(lo, min(subjects, lo + _BATCH)))
        results = client.enroll_batch(
            [subject_id(i) for i in ids],
            model.samples(ids, 0),
            mode="replace",
            request_ids=[f"demo-{model.seed}-{i}" for i in ids],
            timeout=120,
        )
        failed = [r for r in results if not r.ok]
        if failed:
            raise RuntimeError(f"demo enrollment failed: {failed[0].code.name} {failed[0].message}")
        done += len(ids)
        rate = done / max(time.monotonic() - started, 1e-9)
        sys.stdout.write(
            f"\r  enrolling demo gallery: {done:>7,}/{subjects:,} subjects "
            f"({rate:,.0f}/s, {100 * done / subjects:5.1f} %)"
        )
        sys.stdout.flush()
    sys.stdout.write("\n")
    return done


def show(client: TunggalClient, subjects: int, model: FaceModel = DEMO_MODEL) -> None:
    """Print a few verify and identify answers a person can read."""
    rng = np.random.default_rng()
    a, b = (int(x) for x in rng.choice(subjects, size=2, replace=False))
    probe_a = model.samples([a], 1)[0]  # a new capture of person a
    stranger = model.samples([10**9 + int(rng.integers(10**6))], 1)[0]

    def timed(fn: Callable[..., T], *args: Any, **kwargs: Any) -> tuple[T, float]:
        t0 = time.perf_counter()
        out = fn(*args, **kwargs)
        return out, (time.perf_counter() - t0) * 1000

    print("\n1:1 verify")
    res, ms = timed(client.verify, subject_id(a), probe_a)
    print(
        f"  new photo of {subject_id(a)} vs {subject_id(a)}: score {res.score:.3f} "
        f"-> {'MATCH' if res.match else 'no match'} (threshold {res.threshold:.2f}, {ms:.1f} ms)"
    )
    res, ms = timed(client.verify, subject_id(b), probe_a)
    print(
        f"  new photo of {subject_id(a)} vs {subject_id(b)}: score {res.score:.3f} "
        f"-> {'MATCH' if res.match else 'no match'} (threshold {res.threshold:.2f}, {ms:.1f} ms)"
    )
    threshold = res.threshold
    print("\n1:N identify (top 3)")
    for label, probe in ((f"new photo of {subject_id(a)}", probe_a), ("a stranger", stranger)):
        found, ms = timed(client.identify, probe, k=3)
        print(
            f"  {label}: {found.shards_answered}/{found.shards_total} shards, {ms:.1f} ms"
            + (" (PARTIAL)" if found.partial else "")
        )
        for rank, c in enumerate(found.candidates, 1):
            verdict = "MATCH" if c.score >= threshold else "below threshold"
            print(f"    {rank}. {c.subject_id}  score {c.score:.3f}  on {c.shard}  {verdict}")
