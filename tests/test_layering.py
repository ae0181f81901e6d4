"""The rooms import downwards only: tools over services over the shared core.

`tunggal` (errors, validation, settings, logging, rpc helpers, generated
stubs, the client library) is imported by every room and imports none of
them; the gateway and the matcher node do not import each other; only
`tunggal_tools` (CLI, local cluster, demo, load, accuracy) may import them all.
Every import statement counts, function-local ones included.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

FORBIDDEN: dict[str, frozenset[str]] = {
    "tunggal": frozenset({"gateway", "matcher", "shard", "tunggal_tools", "bench", "tests"}),
    "shard": frozenset({"gateway", "matcher", "tunggal_tools", "bench", "tests"}),
    "matcher": frozenset({"gateway", "tunggal_tools", "bench", "tests"}),
    "gateway": frozenset({"matcher", "tunggal_tools", "bench", "tests"}),
    "tunggal_tools": frozenset({"bench", "tests"}),
}
"""Top-level packages each room must never import."""


def imported_packages(source: str) -> Iterator[tuple[int, str]]:
    """(line, top-level package) of every absolute import in `source`."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name.partition(".")[0]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.lineno, node.module.partition(".")[0]


def violations(room: str) -> list[str]:
    """`path:line imports package` for each forbidden import under `room`."""
    found = []
    for path in sorted((REPO / room).rglob("*.py")):
        for line, package in imported_packages(path.read_text()):
            if package in FORBIDDEN[room]:
                found.append(f"{path.relative_to(REPO)}:{line} imports {package}")
    return found


@pytest.mark.parametrize("room", sorted(FORBIDDEN))
def test_room_imports_only_the_rooms_below_it(room: str) -> None:
    assert (REPO / room).is_dir()
    assert violations(room) == []


def test_the_check_sees_function_local_and_dotted_imports() -> None:
    source = "import os\nfrom gateway.tenants import x\ndef f():\n    import matcher.gallery\n"
    assert list(imported_packages(source)) == [(1, "os"), (2, "gateway"), (4, "matcher")]
