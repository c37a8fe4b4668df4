"""The benchmark harness runs end to end (``python -m bench --quick``) and reports every
workload for every implementation. No timing is asserted: CI machines are too noisy for that.
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


@pytest.mark.timeout(900)
def test_quick_run_reports_every_workload_and_implementation(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--output", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=840,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    document = json.loads((tmp_path / "bench.json").read_text())
    table = (tmp_path / "bench.txt").read_text()

    assert document["mode"] == "quick"
    assert set(document["workloads"]) == set(EXPECTED)
    for workload, impls in EXPECTED.items():
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
    # The named shapes are all there.
    rows = document["rows"]
    for name in (
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
        "renewer.lateness",
        "renewer.idle_cpu",
    ):
        assert name in rows, name
    assert rows["session_state.get_state"]["implementations"]["sbsync"]["p99"] is not None
    assert rows["shared_sender.threads_16"]["implementations"]["sbsync"]["amqp_connections"] >= 1
    assert document["targets"], "targets were not evaluated"
