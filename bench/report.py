"""What every same-run benchmark of issue 6 prints: the machine line, paired ratios, a Markdown table.

Figures from different runs are never divided by one another: each module
measures every configuration it compares in interleaved rounds, and a ratio
is the median of the per-round ratios (each round's runs are back to back,
so a slow phase of a shared machine hits both sides of the ratio).
"""

from __future__ import annotations

import datetime
import os
import platform
import statistics
from typing import Iterable, List, Sequence


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def load_average() -> str:
    one, five, fifteen = os.getloadavg()
    return "%.2f / %.2f / %.2f" % (one, five, fifteen)


def machine_line(what: str) -> str:
    """One sentence: when, on what, and how loaded the machine was when ``what`` started."""
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return ("%s, %s. Machine: %d CPUs (nproc), %s, Python %s; load average (1/5/15 min) %s at the start."
            % (what, now, os.cpu_count() or 0, cpu_model(), platform.python_version(), load_average()))


def paired_ratio(numerators: Sequence[float], denominators: Sequence[float]) -> float:
    """Median of the per-round ratios ``numerators[i] / denominators[i]``."""
    return statistics.median(n / d for n, d in zip(numerators, denominators))


def median(values: Iterable[float]) -> float:
    return statistics.median(list(values))


def runs(values: Sequence[float], fmt: str = "%.0f") -> str:
    return ", ".join(fmt % v for v in values)


def markdown_table(header: Sequence[str], rows: List[Sequence[str]]) -> str:
    lines = ["| %s |" % " | ".join(header), "|%s|" % "|".join("---" for _ in header)]
    lines += ["| %s |" % " | ".join(str(cell) for cell in row) for row in rows]
    return "\n".join(lines)


def verdict(value: float, target: float, at_most: bool = False) -> str:
    met = value <= target if at_most else value >= target
    return "%s %.3g (%s)" % ("≤" if at_most else "≥", target, "met" if met else "not met")
