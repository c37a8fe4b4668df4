"""The benchmark's machinery: emulator process, meters, interleaving, statistics, output.

Workload modules (``bench/workloads/``) describe *what* to run for each implementation as
:class:`Case` objects; this module runs them repetition by repetition, rotating the order of
the implementations each repetition so that drift in machine load is shared by all of them,
and turns what they measured into :class:`Row` objects, a text table, JSON and (if
matplotlib is installed) a PNG chart.
"""

from __future__ import annotations

import json
import os
import statistics
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

from bench._emulator import REPO, Emulator, cpu_seconds, rss_bytes

RESULTS_DIR = REPO / "bench" / "results"
BODY = b"x" * 1024

#: The three implementations every workload compares (some workloads add variants).
SYNC, AIO, SBSYNC = "sync", "aio", "sbsync"
IMPLS = (SYNC, AIO, SBSYNC)

#: A process using at least this share of one core during a run is taken to bound it.
BUSY = 0.85
#: Below this much timed wall time, /proc's 10 ms CPU ticks say nothing.
MIN_ATTRIBUTION = 0.5

__all__ = [
    "AIO",
    "BODY",
    "IMPLS",
    "REPO",
    "RESULTS_DIR",
    "SBSYNC",
    "SYNC",
    "Case",
    "Context",
    "Emulator",
    "Figure",
    "Meter",
    "Rep",
    "Row",
    "classify",
    "connection_inodes",
    "cpu_seconds",
    "established_connections",
    "interleave",
    "latency_figure",
    "percentile",
    "render_table",
    "rss_bytes",
    "throughput_figure",
    "write_json",
    "write_png",
]


def _own_socket_inodes() -> set[str]:
    own: set[str] = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            own.add(target[8:-1])
    return own


def connection_inodes(port: int) -> set[str]:
    """Socket inodes of this process's ESTABLISHED TCP connections to ``port``."""
    own = _own_socket_inodes()
    found: set[str] = set()
    for table in ("/proc/self/net/tcp", "/proc/self/net/tcp6"):
        try:
            with open(table) as f:
                next(f)
                for line in f:
                    parts = line.split()
                    remote, state, inode = parts[2], parts[3], parts[9]
                    if state == "01" and int(remote.rsplit(":", 1)[1], 16) == port and inode in own:
                        found.add(inode)
        except FileNotFoundError:
            continue
    return found


def established_connections(port: int) -> int:
    """This process's ESTABLISHED TCP connections to ``port`` (one per AMQP connection)."""
    return len(connection_inodes(port))


# -- measuring one repetition -----------------------------------------------------------------


class Meter:
    """Times the measured regions of one repetition, and the CPU both processes used in them.

    A repetition may do untimed work (filling a queue) outside ``with meter.timing(name):``;
    a workload measuring two things in one repetition names two regions. ``threads`` and
    ``connections`` are sampled by the workload at its busiest moment.
    """

    def __init__(
        self,
        emulator: Emulator,
        foreign_sockets: frozenset[str] = frozenset(),
        foreign_threads: frozenset[int] = frozenset(),
    ) -> None:
        self._emulator = emulator
        # Other implementations' clients are open at the same time (interleaving): what
        # they (or the harness) opened is left out of this implementation's counts.
        self._foreign_sockets = foreign_sockets
        self._foreign_threads = foreign_threads
        #: region -> (wall s, emulator CPU s, client CPU s)
        self.regions: dict[str, tuple[float, float, float]] = {}
        self.threads = 0
        self.connections = 0

    @contextmanager
    def timing(self, region: str = "") -> Iterator[None]:
        emu, own, wall = self._emulator.cpu(), time.process_time(), time.perf_counter()
        yield
        self.regions[region] = (
            time.perf_counter() - wall,
            self._emulator.cpu() - emu,
            time.process_time() - own,
        )

    def sample(self) -> None:
        """Record this implementation's threads (the calling thread included) and AMQP
        connections to the emulator (established TCP connections) now."""
        threads = sum(
            1
            for t in threading.enumerate()
            if t.ident not in self._foreign_threads or t is threading.current_thread()
        )
        sockets = connection_inodes(self._emulator.port) - self._foreign_sockets
        self.threads = max(self.threads, threads)
        self.connections = max(self.connections, len(sockets))


class Case(Protocol):
    """One implementation's side of one workload variant."""

    def setup(self) -> None:
        """Open clients and links (not timed)."""

    def rep(self, meter: Meter) -> dict[str, Any]:
        """One repetition; time the measured part with ``meter.timing()``. Returns figures:
        numbers (one per repetition, e.g. ``msgs_per_s``) or lists (latency samples, s)."""

    def teardown(self) -> None:
        """Close what setup opened."""

    # Optional: ``owned_sockets`` / ``owned_threads`` (sets of socket inodes / thread idents)
    # for what a case uses but opened before its setup (links kept across interleaves).


@dataclass
class Rep:
    """What one repetition of one implementation measured."""

    values: dict[str, Any]
    regions: dict[str, tuple[float, float, float]]
    threads: int
    connections: int

    def cpu_shares(self, region: str) -> tuple[float, float]:
        """(emulator, client) CPU as a share of one core over a timed region."""
        wall, emu, own = self.regions.get(region) or self.regions.get("") or (1.0, 0.0, 0.0)
        wall = max(wall, 1e-9)
        return emu / wall, own / wall


def interleave(
    cases: dict[str, Case],
    reps: int,
    emulator: Emulator,
    log: Callable[[str], None],
) -> dict[str, list[Rep]]:
    """Set every case up, run ``reps`` rounds of one repetition each, rotating who goes first,
    then tear them all down (also on error)."""
    names = list(cases)
    out: dict[str, list[Rep]] = {name: [] for name in names}
    # Who owns which sockets and threads: what existed before, and what each setup added.
    sockets = {"": connection_inodes(emulator.port)}
    threads = {"": _thread_idents()}
    began = time.perf_counter()
    with ExitStack() as stack:
        for name in names:
            before_sockets, before_threads = connection_inodes(emulator.port), _thread_idents()
            cases[name].setup()
            stack.callback(_teardown, cases[name], name, log)
            # A case reusing links opened earlier (by a previous interleave) names them.
            sockets[name] = (connection_inodes(emulator.port) - before_sockets) | set(
                getattr(cases[name], "owned_sockets", ())
            )
            threads[name] = (_thread_idents() - before_threads) | set(
                getattr(cases[name], "owned_threads", ())
            )
        for name in names:
            sockets[""] -= sockets[name]
            threads[""] -= threads[name]
        log(f"  set up in {time.perf_counter() - began:.1f}s")
        for r in range(reps):
            order = names[r % len(names) :] + names[: r % len(names)]
            spent = []
            for name in order:
                began = time.perf_counter()
                meter = Meter(
                    emulator,
                    frozenset().union(*(v for k, v in sockets.items() if k != name)),
                    frozenset().union(*(v for k, v in threads.items() if k != name)),
                )
                values = cases[name].rep(meter)
                out[name].append(Rep(values, meter.regions, meter.threads, meter.connections))
                spent.append(f"{name} {time.perf_counter() - began:.1f}s")
            log(f"  round {r + 1}/{reps}: {', '.join(spent)}")
    return out


def _thread_idents() -> set[int]:
    return {t.ident for t in threading.enumerate() if t.ident is not None}


def _teardown(case: Case, name: str, log: Callable[[str], None]) -> None:
    try:
        case.teardown()
    except Exception as exc:  # a failed close must not hide the figures (or the first error)
        log(f"  teardown of {name} failed: {exc!r}")


# -- statistics ---------------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile, ``q`` in 0..100."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


@dataclass
class Figure:
    """One implementation's result in one row."""

    median: float
    p99: float | None = None
    runs: list[float] = field(default_factory=list)
    samples: int = 0
    emulator_cpu: float = 0.0  # share of one core over the timed regions of all repetitions
    client_cpu: float = 0.0
    timed_s: float = 0.0  # the timed regions' total length
    threads: int | None = None
    connections: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def cpu_us_per_op(self, unit: str) -> float | None:
        """Client CPU per operation (us), from the CPU share and the median: for a rate
        (``msgs/s``) share / rate; for a latency in ms, share x latency. None otherwise."""
        if not self.median or self.median != self.median:
            return None
        if unit.endswith("/s"):
            return self.client_cpu / self.median * 1e6
        if unit == "ms":
            return self.client_cpu * self.median * 1e3
        return None

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"median": _round(self.median)}
        if self.p99 is not None:
            out["p99"] = _round(self.p99)
        if self.runs:
            out["runs"] = [_round(v) for v in self.runs]
        if self.samples:
            out["samples"] = self.samples
        out["emulator_cpu_share"] = round(self.emulator_cpu, 2)
        out["client_cpu_share"] = round(self.client_cpu, 2)
        out["timed_s"] = round(self.timed_s, 2)
        if self.threads is not None:
            out["threads"] = self.threads
        if self.connections is not None:
            out["amqp_connections"] = self.connections
        out.update(self.extra)
        return out


@dataclass
class Row:
    """One line of the table: one figure for every implementation, and what bounds it."""

    workload: str
    case: str
    unit: str  # "msgs/s", "ms", "MiB", ...
    higher_is_better: bool
    figures: dict[str, Figure]
    note: str = ""
    bound: str = ""

    @property
    def name(self) -> str:
        return f"{self.workload}.{self.case}" if self.case else self.workload

    def ratio(self, other: str) -> float | None:
        mine, theirs = self.figures.get(SBSYNC), self.figures.get(other)
        if mine is None or theirs is None:
            return None
        # A ratio of times or rates; none for values that can be <= 0 (lateness) or NaN.
        if not (theirs.median > 0 and mine.median >= 0):
            return None
        return mine.median / theirs.median

    def as_json(self) -> dict[str, Any]:
        return {
            "unit": self.unit,
            "higher_is_better": self.higher_is_better,
            "implementations": {k: v.as_json() for k, v in self.figures.items()},
            "sbsync_over_aio": _round(self.ratio(AIO)),
            "sbsync_over_sync": _round(self.ratio(SYNC)),
            "bound": self.bound,
            "note": self.note,
        }


def _common(reps: list[Rep], region: str) -> dict[str, Any]:
    # CPU over all repetitions together: /proc counts in clock ticks (10 ms), too coarse
    # for one short repetition.
    spans = [rep.regions.get(region) or rep.regions.get("") or (0.0, 0.0, 0.0) for rep in reps]
    wall = sum(s[0] for s in spans)
    return {
        "emulator_cpu": sum(s[1] for s in spans) / wall if wall else 0.0,
        "client_cpu": sum(s[2] for s in spans) / wall if wall else 0.0,
        "timed_s": wall,
        "threads": max(r.threads for r in reps) or None,
        "connections": max(r.connections for r in reps) or None,
    }


def throughput_figure(reps: list[Rep], key: str = "msgs_per_s") -> Figure:
    """Median over repetitions of a per-repetition number (msgs/s); CPU of region ``key``."""
    runs = [float(rep.values[key]) for rep in reps]
    return Figure(median=statistics.median(runs), runs=runs, **_common(reps, key))


def latency_figure(reps: list[Rep], key: str = "latency", scale: float = 1e3) -> Figure:
    """p50 and p99 of every sample of every repetition pooled (``scale`` 1e3: ms)."""
    samples = [s * scale for rep in reps for s in rep.values[key]]
    return Figure(
        median=percentile(samples, 50),
        p99=percentile(samples, 99),
        runs=[percentile([s * scale for s in rep.values[key]], 50) for rep in reps],
        samples=len(samples),
        **_common(reps, key),
    )


def classify(row: Row) -> str:
    """What bounds a row's sbsync figure (or its busiest implementation's), from CPU shares.

    The emulator using about a core means the figure measures the emulator; the client using
    about a core means it measures the client (the GIL); neither means round trips and
    waiting (the network path, the loop hop, SDK polling).
    """
    figure = row.figures.get(SBSYNC) or next(iter(row.figures.values()))
    if figure.timed_s < MIN_ATTRIBUTION:
        return f"timed region too short ({figure.timed_s:.2f} s) to attribute CPU"
    busiest_emu = max(f.emulator_cpu for f in row.figures.values())
    parts = []
    if figure.emulator_cpu >= BUSY or busiest_emu >= BUSY:
        who = "sbsync" if figure.emulator_cpu >= BUSY else "the fastest implementation"
        parts.append(f"emulator CPU (~{max(figure.emulator_cpu, busiest_emu):.0%} of a core for {who})")
    if figure.client_cpu >= BUSY:
        parts.append(f"client CPU ({figure.client_cpu:.0%} of a core: GIL-bound)")
    if figure.emulator_cpu + figure.client_cpu >= 1.7:
        parts.append("both cores busy")
    if not parts:
        parts.append("round-trip latency (neither process CPU-bound)")
    mine, aio = row.figures.get(SBSYNC), row.figures.get(AIO)
    if row.unit == "msgs/s" and mine and aio and mine.median > 0 and aio.median > 0:
        # Throughput turned into time per message: what sbsync's hop costs on top of aio.
        delta = (1 / mine.median - 1 / aio.median) * 1e6
        parts.append(f"sbsync {delta:+.0f} us/msg vs aio")
    return "; ".join(parts)


def _round(value: float | None) -> float | None:
    if value is None:
        return None
    if value != value:  # NaN stays NaN-free in JSON
        return None
    return round(value, 4) if abs(value) < 100 else round(value, 1)


# -- output -------------------------------------------------------------------------------------


def render_table(rows: list[Row], impls: Sequence[str]) -> str:
    """A fixed-width table: medians (and p99 where there is one), ratios, CPU, bound."""
    head = (
        f"{'workload':<34}{'unit':<8}"
        + "".join(f"{name:>20}" for name in impls)
        + f"{'sbsync/aio':>11}{'sbsync/sync':>12}{'emu CPU':>8}{'cli CPU':>8}"
        + f"{'CPU us/op sync/aio/sbsync':>27}  bound / note"
    )
    lines = [head, "-" * len(head)]
    for row in rows:
        cells = []
        for name in impls:
            fig = row.figures.get(name)
            if fig is None:
                cells.append(f"{'-':>20}")
            elif fig.p99 is not None:
                cells.append(f"{_fmt(fig.median)} / {_fmt(fig.p99):<7}".rjust(20))
            else:
                cells.append(f"{_fmt(fig.median):>20}")
        sb = row.figures.get(SBSYNC)
        emu = f"{sb.emulator_cpu:.0%}" if sb else "-"
        cli = f"{sb.client_cpu:.0%}" if sb else "-"
        notes = "; ".join(x for x in (row.bound, row.note) if x)
        per_op = []
        for name in (SYNC, AIO, SBSYNC):
            fig = row.figures.get(name)
            value = fig.cpu_us_per_op(row.unit) if fig is not None else None
            per_op.append("-" if value is None else f"{value:.0f}")
        lines.append(
            f"{row.name:<34}{row.unit:<8}"
            + "".join(cells)
            + f"{_fmt_ratio(row.ratio(AIO)):>11}{_fmt_ratio(row.ratio(SYNC)):>12}"
            + f"{emu:>8}{cli:>8}{' / '.join(per_op):>27}  {notes}"
        )
    lines.append("")
    lines.append(
        "Cells: median (latency rows: p50 / p99). CPU columns: sbsync's run, share of one core "
        "used by the emulator process and by the client process during the timed region. "
        "CPU us/op: the client process's CPU per message or call, for each implementation."
    )
    return "\n".join(lines)


def _fmt(value: float) -> str:
    if value != value:
        return "nan"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.3f}"


def _fmt_ratio(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.2f}x" if value >= 0.1 else f"{value:.2g}x"


def write_json(path: Path, document: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2, allow_nan=False) + "\n")


def write_png(path: Path, rows: list[Row], impls: Sequence[str]) -> bool:
    """Bar charts of sbsync/sync and sbsync/aio per row, if matplotlib is installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    named = [row for row in rows if row.ratio(SYNC) is not None or row.ratio(AIO) is not None]
    fig, ax = plt.subplots(figsize=(10, max(3.0, 0.35 * len(named))))
    positions = range(len(named))
    for offset, other in ((-0.2, SYNC), (0.2, AIO)):
        values = [row.ratio(other) or 0.0 for row in named]
        ax.barh([p + offset for p in positions], values, height=0.4, label=f"sbsync / {other}")
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.set_yticks(list(positions))
    ax.set_yticklabels([f"{row.name} ({row.unit})" for row in named])
    ax.invert_yaxis()
    ax.set_xlabel("ratio of medians (throughput: >1 is better; latency/memory: <1 is better)")
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


class Context:
    """What a workload gets: the emulator, the mode, and a logger."""

    def __init__(
        self, emulator: Emulator, *, quick: bool, reps: int, log: Callable[[str], None]
    ) -> None:
        self.emulator = emulator
        self.quick = quick
        self.reps = reps
        self.log = log

    def pick(self, quick: Any, full: Any) -> Any:
        return quick if self.quick else full
