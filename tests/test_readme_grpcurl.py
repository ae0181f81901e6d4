"""The README's grpcurl commands, run verbatim with the real grpcurl binary.

grpcurl is what callers reach for first, so its section of the README is
part of the contract: every command there must work as written against a
demo cluster (only the gateway's port differs), over server reflection with
no proto file. `make test` installs grpcurl into .venv/bin (Makefile,
`$(BIN)/grpcurl`).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import free_port_run, run_to_exit
from tunggal_tools.demo import DemoClients, seed
from tunggal_tools.localcluster import LocalCluster

pytestmark = pytest.mark.cluster

REPO = Path(__file__).resolve().parent.parent
GRPCURL = REPO / ".venv" / "bin" / "grpcurl"
README_ADDRESS = "127.0.0.1:50051"
SUBJECTS = 2000  # the README's examples use demo subject 42


def readme_grpcurl_blocks() -> list[str]:
    """The ```sh blocks of the README's grpcurl section, in order."""
    text = (REPO / "README.md").read_text()
    section = text.split("### grpcurl", 1)[1].split("\n### ", 1)[0]
    return re.findall(r"```sh\n(.*?)```", section, flags=re.DOTALL)


def json_documents(text: str) -> list[dict[str, object]]:
    """The JSON objects grpcurl printed one after the other (each opens a line;
    `describe` output, also in `text`, opens its braces mid-line)."""
    decoder = json.JSONDecoder()
    found, pos = [], 0
    while pos < len(text):
        if text.startswith("{", pos):
            document, pos = decoder.raw_decode(text, pos)
            found.append(document)
        next_line = text.find("\n", pos)
        if next_line < 0:
            break
        pos = next_line + 1
    return found


@pytest.fixture(scope="module")
def demo_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """A 2-node cluster with the demo tenants and a small demo gallery."""
    cluster = LocalCluster(tmp_path_factory.mktemp("grpcurl"), base_port=free_port_run(3))
    cluster.start()
    try:
        with DemoClients.connect(cluster.address, timeout=60) as demo:
            seed(demo.registry, SUBJECTS, stats=demo.ops, quiet=True)
        yield cluster
    finally:
        cluster.stop()


def run_block(block: str, address: str) -> str:
    """Run one README block in bash (stopping at the first failure); its stdout."""
    assert GRPCURL.exists(), f"{GRPCURL} is missing: `make test` installs it (Makefile)"
    script = "set -euo pipefail\n" + block.replace(README_ADDRESS, address)
    env = {**os.environ, "PATH": f"{GRPCURL.parent}{os.pathsep}{os.environ['PATH']}"}
    done = run_to_exit(["/bin/bash", "-c", script], env, timeout=120)
    assert done.returncode == 0, f"{block}\nstdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    return done.stdout


def test_the_readme_shows_the_commands_this_test_runs() -> None:
    blocks = readme_grpcurl_blocks()
    assert len(blocks) == 3
    assert all(README_ADDRESS in b for b in (blocks[0], blocks[2]))


def test_listing_describing_stats_and_health(demo_cluster: LocalCluster) -> None:
    out = run_block(readme_grpcurl_blocks()[0], demo_cluster.address)
    listed = out.split("tunggal.v1.Matcher is a service:")[0].split()
    assert {"tunggal.v1.Matcher", "tunggal.ops.v1.Operations", "grpc.health.v1.Health"} <= set(
        listed
    )
    assert not any("MatcherNode" in name for name in listed)  # internal API stays internal
    assert "rpc Identify ( .tunggal.v1.IdentifyRequest )" in out
    stats, health = json_documents(out)[-2:]
    nodes = stats["nodes"]
    assert isinstance(nodes, list) and [n["name"] for n in nodes] == ["node-0", "node-1"]
    assert health == {"status": "SERVING"}


def test_identify_verify_enroll_get_delete(demo_cluster: LocalCluster) -> None:
    blocks = readme_grpcurl_blocks()
    out = run_block(blocks[1] + blocks[2], demo_cluster.address)
    identify, verify, enroll, subject, deleted = json_documents(out)
    candidates = identify["candidates"]
    assert isinstance(candidates, list) and len(candidates) == 3
    assert candidates[0]["subject_id"] == "3171000000000042"  # grpcurl keeps proto names
    assert identify["shards_answered"] == identify["shards_total"] == 2
    assert verify["subject_id"] == "3171000000000042" and verify["match"] is True
    assert enroll["subject_id"] == "demo-001" and enroll["template_count"] == 1
    assert subject["subject_id"] == "demo-001" and subject["template_count"] == 1
    assert deleted == {"subject_id": "demo-001", "deleted": True, "templates_removed": 1}
