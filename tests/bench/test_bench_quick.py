"""The benchmark harness runs end to end (``python -m bench --quick``, in groups of workloads)
and reports every workload for every implementation. No timing is asserted: CI machines are too
noisy for that.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

#: Workload -> implementations its rows must report (the harness's own declaration is
#: checked against this, so a workload cannot silently drop one).
EXPECTED = {
    "session_state": {"sync", "aio", "sbsync"},
    "send": {"sync", "aio", "sbsync"},
    "drain": {"sync", "aio", "sbsync"},
    "shared_sender": {"sync", "sync-per-thread", "aio", "sbsync"},
    "per_request": {"sync", "sbsync"},
    "processor": {"sync", "aio", "sbsync"},
    "renewer": {"sync", "sync-1-worker", "aio", "sbsync"},
    "memory": {"sync", "aio", "sbsync"},
}


#: The quick run split into groups of about 20 s each (one ``--only`` run per test), so that
#: the parallel suite does not wait on one 90 s test; together they cover every workload.
GROUPS = {
    "latency": ["session_state", "send", "drain", "memory"],
    "shared_sender": ["shared_sender"],
    "requests": ["per_request", "processor"],
    "renewer": ["renewer"],
}

#: The issue's named shapes.
NAMED_ROWS = (
    "session_state.get_state",
    "session_state.set_state",
    "send.single",
    "send.batch",
    "drain.session",
    "shared_sender.threads_1",
    "shared_sender.threads_4",
    "shared_sender.threads_16",
    "shared_sender.threads_64",
    "per_request.open_send_close",
    "per_request.session_state",
    "renewer.lateness",
    "renewer.idle_cpu",
)


def test_the_groups_cover_every_workload() -> None:
    declared = subprocess.run(
        [sys.executable, "-c", "from bench.run import WORKLOADS; print(*WORKLOADS)"],
        cwd=REPO, capture_output=True, text=True, timeout=60, check=True,
    ).stdout.split()
    grouped = [name for names in GROUPS.values() for name in names]
    assert sorted(grouped) == sorted(EXPECTED) == sorted(declared)


@pytest.mark.timeout(600)
@pytest.mark.parametrize("group", list(GROUPS))
def test_quick_run_reports_every_workload_and_implementation(group: str, tmp_path: Path) -> None:
    workloads = GROUPS[group]
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--reps", "2", "--only", *workloads, "--output", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=540,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    document = json.loads((tmp_path / "bench.json").read_text())
    table = (tmp_path / "bench.txt").read_text()

    assert document["mode"] == "quick"
    assert document["reps"] == 2
    assert set(document["workloads"]) == set(workloads)
    for workload in workloads:
        impls = EXPECTED[workload]
        entry = document["workloads"][workload]
        assert "error" not in entry, entry
        assert set(entry["implementations"]) == impls
        assert entry["rows"], f"{workload} produced no rows"
        for name in entry["rows"]:
            row = document["rows"][name]
            assert set(row["implementations"]) == impls, name
            for figure in row["implementations"].values():
                # None only where nothing could be measured (e.g. no renewal happened).
                assert "median" in figure, (name, figure)
            assert row["bound"], name
            assert name in table
    rows = document["rows"]
    for name in NAMED_ROWS:
        if name.split(".")[0] in workloads:
            assert name in rows, name
    if "session_state" in workloads:
        sbsync_state = rows["session_state.get_state"]["implementations"]["sbsync"]
        assert sbsync_state["p99"] is not None
        # The floor the per-call targets are read against: the bare hop's latency and CPU.
        assert sbsync_state["bare_hop_us"]["cpu_us"] > 0, sbsync_state["bare_hop_us"]
        assert document["targets"], "targets were not evaluated"
    if "shared_sender" in workloads:
        assert rows["shared_sender.threads_16"]["implementations"]["sbsync"]["amqp_connections"] >= 1
        assert document["targets"], "targets were not evaluated"
