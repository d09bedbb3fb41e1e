"""InfluxDB sink: line protocol, outage + restart against VictoriaMetrics (every point exactly once),
quarantine of points a server refuses (stub answering 400), the outbox bound and bounded shutdown."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from controller.telemetry.influx import (
    InfluxSink,
    InfluxWriter,
    accuracy_lines,
    alarm_lines,
    encode_line,
    plan_lines,
    state_lines,
    to_ms,
)
from controller.telemetry.outbox import Outbox
from ems.clock import ManualClock
from tests.peers import (  # noqa: F401 (fixtures)
    StubInflux,
    VictoriaMetrics,
    free_port,
    sample_plan,
    sample_state,
    stub_influx,
    victoria_metrics,
)

T0 = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)


def make_sink(path: Path, url: str, clock: ManualClock, max_points: int = 100_000, alarms: list | None = None,
              timeout_s: float = 5.0) -> InfluxSink:
    sink = InfluxSink("demo-factory", Outbox(path, max_points), InfluxWriter(url, "ems", "ems", None, timeout_s),
                      clock, batch_size=500, max_backoff_s=0.5, spool_interval_s=0.05,
                      on_alarm=(lambda *a: alarms.append(a)) if alarms is not None else None)
    sink.start()
    return sink


async def until(predicate: Callable[[], bool], timeout_s: float = 20.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not predicate():
            await asyncio.sleep(0.05)


# -- line protocol ------------------------------------------------------------------------------


def test_encode_line_escapes_and_types() -> None:
    line = encode_line("ems state", {"site": "a b,c=d", "empty": ""}, {"x=1": 2, "s": 'say "hi"', "n": float("nan")},
                       1000)
    assert line == 'ems\\ state,site=a\\ b\\,c\\=d x\\=1=2.0,s="say \\"hi\\"" 1000'
    assert encode_line("m", {}, {"n": float("inf")}, 1) is None


def test_state_lines_schema() -> None:
    state = sample_state(T0, 3)
    lines = state_lines("demo-factory", state)
    assert [line.split(",", 1)[0] for line in lines] == ["ems_state", "ems_measurement", "ems_quality"]
    ems_state = lines[0]
    for field in ("pv_kw=403.0", "load_kw=821.0", "soc_pct=50.3", "setpoints_battery_kw=97.0",
                  'mode="auto"', "tariff_import_price=1833.0", "today_saved=1250300.0", "alarms_active=0.0",
                  'tariff_period="normal"', "solver_solve_ms=380.0", "plan_soc_pct=55.0", "setpoints_safe=0.0",
                  'setpoints_follow="battery"', "devices_grid-meter_ok=1.0", "cycle_cycle_ms=15.4"):
        assert field in ems_state, field
    for absent in ("solver_status", "plan_step_start", "tariff_currency", "today_day", "bounds", "pv_limit_kw"):
        assert absent not in ems_state, absent
    assert "frequency_hz" not in lines[1]             # missing is absent, never 0
    assert 'frequency_hz="stale"' in lines[2]
    assert all(line.endswith(f" {to_ms(T0)}") for line in lines)


def test_state_lines_say_when_the_month_peak_was_set() -> None:
    """The month peak's time as a number (Unix seconds: databases without string fields keep it) and its tariff
    period as a string; neither while the month has no peak yet."""
    state = sample_state(T0, 3)
    state["demand"] = {**state["demand"], "month_peak_at": "2026-05-04T01:30:00+00:00", "month_peak_period": "normal"}
    line = state_lines("s", state)[0]
    assert f"demand_month_peak_at_s={datetime(2026, 5, 4, 1, 30, tzinfo=UTC).timestamp()!r}," in line
    assert 'demand_month_peak_period="normal"' in line
    state["demand"] = {**state["demand"], "month_peak_at": None, "month_peak_period": None}
    assert "month_peak_at" not in state_lines("s", state)[0] and "month_peak_period" not in state_lines("s", state)[0]


def test_plan_and_alarm_lines() -> None:
    lines = plan_lines("s", sample_plan(T0))
    t = to_ms(T0)
    assert lines[2] == (f"ems_plan,site=s duration_h=0.25,battery_kw=20.0,charge_kw=0.0,discharge_kw=20.0,"
                        f"grid_kw=300.0,import_kw=300.0,export_kw=0.0,pv_kw=400.0,curtail_kw=0.0,load_kw=700.0,"
                        f'import_price=1833.0,export_price=0.0,period="normal" {t + 1_800_000}')
    soc = [line for line in lines if "soc_kwh" in line]
    assert soc[0] == f"ems_plan,site=s soc_kwh=500.0,soc_pct=50.0 {t}"          # soc0 at the first start
    assert soc[1] == f"ems_plan,site=s soc_kwh=497.5,soc_pct=49.75 {t + 900_000}"  # end of step 0
    assert lines[-1] == (f"ems_plan_info,site=s objective_energy_cost=1000000.0,objective_total=900000.0,"
                         f"solver_solve_ms=40.0,soc0_kwh=500.0,capacity_kwh=1000.0 {t}")
    alarm = {"ts": T0.isoformat(), "code": "bms_fault", "severity": "critical", "active": True, "message": "BMS"}
    assert alarm_lines("s", alarm) == [
        f'ems_alarm,code=bms_fault,severity=critical,site=s active=1.0,message="BMS" {t}']


def lead(name: str, n: int, mae: float, **extra) -> dict:
    """A per-lead row as the accuracy figures give it (None where nothing was compared)."""
    return {"lead": name, "n": n, "mae_kw": mae, "rmse_kw": None if n == 0 else mae + 2.0, "skill": None, **extra}


def accuracy(external_mae: float) -> dict:
    """The state's ``forecast_accuracy``: the built-in PV model over two leads, one load forecast from outside."""
    return {"window_days": 14, "pv": {"issues": 56, "by_lead": [lead("0-1 h", 40, 12.5), lead("1-6 h", 0, None)]},
            "load": {"issues": 56, "by_lead": []},
            "external": {"window_days": 14, "load": [{
                "source": "plant fc", "issues": 3, "band_scale_p10": 2.0, "band_scale_p90": 0.667,
                "by_lead": [lead("24-48 h", 192, external_mae, skill_vs_builtin=0.25, band_coverage=0.5)]}]}}


def test_accuracy_lines_one_per_quantity_source_and_lead() -> None:
    """Known answer: tags quantity, source (``builtin`` or the sender, escaped) and lead without its space; only the
    figures given; the built-in load model with no leads scored and the PV lead with n = 0 and no MAE write what
    they have (the count), never a 0 for a missing figure."""
    t = to_ms(T0)
    assert accuracy_lines("s", accuracy(10.0), T0.isoformat()) == [
        f"ems_forecast_accuracy,lead=0-1h,quantity=pv,site=s,source=builtin n=40.0,mae_kw=12.5,rmse_kw=14.5,"
        f"issues=56.0,window_days=14.0 {t}",
        f"ems_forecast_accuracy,lead=1-6h,quantity=pv,site=s,source=builtin n=0.0,issues=56.0,window_days=14.0 {t}",
        f"ems_forecast_accuracy,lead=24-48h,quantity=load,site=s,source=plant\\ fc n=192.0,mae_kw=10.0,"
        f"rmse_kw=12.0,skill_vs_builtin=0.25,band_coverage=0.5,issues=3.0,window_days=14.0,band_scale_p10=2.0,"
        f"band_scale_p90=0.667 {t}"]


async def test_the_sink_writes_forecast_accuracy_when_it_changes(victoria_metrics: VictoriaMetrics,  # noqa: F811
                                                                 tmp_path: Path) -> None:
    """Five states, the accuracy changing at the first and the fourth: VictoriaMetrics holds the external MAE at
    those two instants only, with the state's timestamps."""
    clock = ManualClock(T0)
    sink = make_sink(tmp_path / "outbox.sqlite", victoria_metrics.url, clock)
    stamps = []
    for i, mae in enumerate((10.0, 10.0, 10.0, 8.0, 8.0)):
        clock.advance(1.0)
        sink.offer("state", {**sample_state(clock.now(), i), "forecast_accuracy": accuracy(mae)})
        stamps.append(to_ms(clock.now()))
    await until(lambda: sink.backlog == 0)
    await sink.aclose()
    samples = victoria_metrics.wait_for("ems_forecast_accuracy_mae_kw", 2, source="plant fc", lead="24-48h")
    assert samples == [(stamps[0], 10.0), (stamps[3], 8.0)]
    assert victoria_metrics.wait_for("ems_forecast_accuracy_mae_kw", 2, source="builtin", quantity="pv") == [
        (stamps[0], 12.5), (stamps[3], 12.5)]
    assert len(victoria_metrics.export("ems_state_load_kw")) == 5


def test_a_malformed_forecast_accuracy_loses_no_state_line(tmp_path: Path) -> None:
    """An accuracy figure without its source is counted and logged once; the state's own lines are kept."""
    sink = InfluxSink("s", Outbox(tmp_path / "outbox.sqlite", 1000), InfluxWriter("http://127.0.0.1:9", "o", "b", None),
                      ManualClock(T0))
    bad = accuracy(10.0)
    del bad["external"]["load"][0]["source"]
    for i in range(2):
        sink.offer("state", {**sample_state(T0 + timedelta(seconds=i), i), "forecast_accuracy": bad})
    assert sink.rejected_messages == 1
    assert sink.backlog == 2 * len(state_lines("s", sample_state(T0)))  # the states' lines, no accuracy line
    sink.outbox.close()


def test_naive_timestamp_is_refused() -> None:
    with pytest.raises(ValueError, match="naive"):
        to_ms("2026-05-04T10:00:00")


# -- against servers ----------------------------------------------------------------------------


async def test_outage_and_restart_deliver_every_point_exactly_once(victoria_metrics: VictoriaMetrics,  # noqa: F811
                                                                   tmp_path: Path) -> None:
    """VictoriaMetrics is stopped for a minute mid-run (states keep coming every 0.5 s meanwhile), the
    controller restarts during the outage (outbox closed and reopened), the server comes back: every
    state reaches it once, in order, with its own timestamp."""
    clock = ManualClock(T0)
    path = tmp_path / "outbox.sqlite"
    sent_ms: list[int] = []

    async def produce(sink: InfluxSink, n: int, interval_s: float = 0.01) -> None:
        for _ in range(n):
            clock.advance(1.0)
            sink.offer("state", sample_state(clock.now(), len(sent_ms)))
            sent_ms.append(to_ms(clock.now()))
            await asyncio.sleep(interval_s)

    alarms: list[tuple] = []
    sink = make_sink(path, victoria_metrics.url, clock, alarms=alarms)
    await produce(sink, 60)
    await until(lambda: sink.backlog == 0)
    victoria_metrics.stop()
    down_at = time.monotonic()
    await produce(sink, 60, interval_s=0.5)
    await until(lambda: sink.last_error is not None)
    await sink.aclose()                                   # controller restart while the TSDB is down
    sink = make_sink(path, victoria_metrics.url, clock, alarms=alarms)
    assert sink.backlog >= 60
    await produce(sink, 60, interval_s=0.5)
    assert time.monotonic() - down_at >= 60.0             # the TSDB was down for a minute
    victoria_metrics.start()
    await produce(sink, 60)
    await until(lambda: sink.backlog == 0)
    await sink.aclose()

    samples = victoria_metrics.wait_for("ems_state_load_kw", len(sent_ms))
    assert [ts for ts, _ in samples] == sent_ms           # all 240, none twice, none lost
    assert ("telemetry.influx_unreachable", True) in [a[:2] for a in alarms]
    assert alarms[-1][:2] == ("telemetry.influx_unreachable", False)


async def test_malformed_point_is_quarantined_and_the_rest_delivered(stub_influx: StubInflux,  # noqa: F811
                                                                     tmp_path: Path) -> None:
    clock = ManualClock(T0)
    alarms: list[tuple] = []
    sink = make_sink(tmp_path / "o.sqlite", stub_influx.url, clock, alarms=alarms)
    for i in range(40):
        clock.advance(1.0)
        sink.offer("state", sample_state(clock.now(), i, mode="malformed" if i == 17 else "auto"))
    await until(lambda: sink.backlog == 0)
    quarantined = sink.outbox.quarantined()
    assert len(quarantined) == 1
    line, reason = quarantined[0]
    assert line.startswith("ems_state,") and 'mode="malformed"' in line and "HTTP 400" in reason
    assert len([x for x in stub_influx.accepted if x.startswith("ems_state,")]) == 39
    assert ("telemetry.influx_quarantine", True) in [a[:2] for a in alarms]
    clock.advance(1.0)
    sink.offer("state", sample_state(clock.now(), 99))   # still running
    await until(lambda: sink.backlog == 0)
    assert sink.outbox.stats().quarantined_total == 1
    await sink.aclose()


async def test_bound_drops_oldest_with_alarm_while_down(tmp_path: Path) -> None:
    clock = ManualClock(T0)
    alarms: list[tuple] = []
    sink = make_sink(tmp_path / "o.sqlite", f"http://127.0.0.1:{free_port()}", clock, max_points=50, alarms=alarms)
    for i in range(40):
        clock.advance(1.0)
        sink.offer("state", sample_state(clock.now(), i))
    await until(lambda: sink.outbox.stats().dropped_total > 0)
    assert sink.outbox.stats().depth == 50
    assert ("telemetry.outbox_overflow", True) in [a[:2] for a in alarms]
    newest = sink.outbox.oldest(50).lines[-1]
    await sink.aclose()
    assert str(to_ms(clock.now())) in newest               # the newest points are the ones kept


async def test_bad_message_is_counted_not_raised(tmp_path: Path) -> None:
    sink = make_sink(tmp_path / "o.sqlite", f"http://127.0.0.1:{free_port()}", ManualClock(T0))
    sink.offer("state", {"ts": "yesterday"})
    sink.offer("state", {"no": "ts"})
    assert sink.rejected_messages == 2
    await sink.aclose()


async def test_shutdown_is_bounded_when_the_server_hangs(tmp_path: Path) -> None:
    """A server that accepts connections and never answers: closing waits at most the HTTP timeout."""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    clock = ManualClock(T0)
    sink = make_sink(tmp_path / "o.sqlite", f"http://127.0.0.1:{silent.getsockname()[1]}", clock, timeout_s=1.0)
    for i in range(5):
        clock.advance(1.0)
        sink.offer("state", sample_state(clock.now(), i))
    await asyncio.sleep(0.3)                                # a write is now hanging on the sender thread
    async with asyncio.timeout(10):
        await sink.aclose(timeout_s=2.0)
    silent.close()
    reopened = Outbox(tmp_path / "o.sqlite", 1000)
    assert reopened.stats().depth >= 10                     # nothing lost: still on disk for the next start
    reopened.close()
