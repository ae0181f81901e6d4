"""bench.cpu_breakdown's variant syntax: name[@checkout]:KEY=VALUE,..."""

from __future__ import annotations

from pathlib import Path

from bench.cpu_breakdown import Variant


def test_variants_name_an_environment_and_optionally_another_checkout() -> None:
    assert Variant.parse("defaults") == Variant("defaults", {}, None)
    assert Variant.parse("two:A=1,B=x=y") == Variant("two", {"A": "1", "B": "x=y"}, None)
    assert Variant.parse(" before @/tmp/old: A=1") == Variant(
        "before", {"A": "1"}, Path("/tmp/old")
    )
