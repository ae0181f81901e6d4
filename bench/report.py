"""Shared helpers of the benchmarks: machine description, medians, the report file."""

from __future__ import annotations

import datetime as dt
import os
import platform
import time
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent.parent / "docs" / "BENCHMARKS.md"


def machine() -> str:
    """One line describing this machine."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (
        f"{cpu}, {os.cpu_count()} cores, {mem:.0f} GiB, "
        f"{platform.system()} {platform.release()}, Python {platform.python_version()}"
    )


def now() -> str:
    """The current UTC date and time, for a report heading."""
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


def rss_bytes(pid: int | str = "self") -> int:
    """Resident memory of a process (Linux)."""
    with open(f"/proc/{pid}/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def cpu_seconds(pid: int | str = "self") -> float:
    """User + system CPU time of a process (all its threads) so far, in seconds (Linux)."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    # fields[0] is field 3 (state); utime and stime are fields 14 and 15.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def log(msg: str) -> None:
    """A progress line with the time of day, flushed at once."""
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def append(section: str, path: Path = BENCHMARKS) -> None:
    """Append a markdown section to docs/BENCHMARKS.md (created if missing)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        path.write_text(
            "# Benchmarks\n\nEach section is one run, appended by a script in bench/.\n"
        )
    with path.open("a") as fh:
        fh.write("\n" + section.rstrip() + "\n")
