"""Shared helpers of the benchmarks: machine description, process figures, the record.

The record: every run is a section appended to the file of its UTC day,
docs/benchmarks/YYYY-MM-DD.md; docs/BENCHMARKS.md holds the targets with their
current figures (edited by hand when a run moves one) and ends with the list of
run files, which `append` extends when it starts a new day.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import re
import time
from pathlib import Path

DOCS = Path(__file__).resolve().parent.parent / "docs"
BENCHMARKS = DOCS / "BENCHMARKS.md"
"""The summary page: targets, current figures and the runs they come from, run files."""
RUNS = DOCS / "benchmarks"
"""One file of runs per UTC day."""
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")


def machine() -> str:
    """One line describing this machine."""
    cpu = platform.processor() or platform.machine()
    try:
        with Path("/proc/cpuinfo").open() as fh:
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
    statm = Path(f"/proc/{pid}/statm").read_text()
    return int(statm.split()[1]) * os.sysconf("SC_PAGE_SIZE")


def cpu_seconds(pid: int | str = "self") -> float:
    """User + system CPU time of a process (all its threads) so far, in seconds (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    # fields[0] is field 3 (state); utime and stime are fields 14 and 15.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def command_line(doc: str | None, prog: str | None = None) -> argparse.ArgumentParser:
    """A benchmark's command line: its module docstring as the help, and --no-write."""
    parser = argparse.ArgumentParser(
        prog=prog, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--no-write", action="store_true", help="print only; leave docs/benchmarks/ alone"
    )
    return parser


def publish(section: str, *, write: bool) -> None:
    """Print a run's markdown section and, if `write`, append it to its day file."""
    print(section)
    if write:
        append(section)


def log(msg: str) -> None:
    """A progress line with the time of day, flushed at once."""
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def run_file(section: str, runs: Path = RUNS) -> Path:
    """The day file a section belongs in: the date in its heading (its first
    line), else today's (UTC)."""
    found = _DATE.search(section.lstrip().split("\n", 1)[0])
    day = found.group(0) if found else dt.datetime.now(dt.UTC).strftime("%Y-%m-%d")
    return runs / f"{day}.md"


def append(section: str, runs: Path = RUNS, summary: Path = BENCHMARKS) -> Path:
    """Append a run's markdown section to its day file under `runs` and return
    that file. A new day file starts with a title, and a link to it is added at
    the end of `summary` (whose last section lists the run files). The targets
    at the top of `summary` are not touched: whoever reads the run updates them."""
    path = run_file(section, runs)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(
            f"# Benchmark runs of {path.stem}\n\n"
            "Each section is one run, appended by a script in bench/, or a reading of runs. "
            f"Targets and current figures: [BENCHMARKS.md](../{summary.name}).\n"
        )
        link = f"- [{path.stem}]({runs.name}/{path.name})"
        text = summary.read_text() if summary.exists() else "# Benchmarks\n\n## Runs\n\n"
        if link not in text.splitlines():
            summary.write_text(text.rstrip("\n") + "\n" + link + "\n")
    with path.open("a") as fh:
        fh.write("\n" + section.rstrip() + "\n")
    return path
