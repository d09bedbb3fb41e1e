"""Which months are planned, defended and billed on a demand charge: one rule (``SiteTariff.billed_demand_charge``,
the charge in force on the billing month's first local day) for the bill, the offline planner's tariff steps, the
live plan keeper's peak defence and the live demand tracker's window. A custom tariff charging 0 per kW until a
15-minute charge starts on 15 May: May is billed, planned and defended on no demand charge, June on the 15-minute
one. Before, the live side defended a peak from 15 May (and under the rate-0 charge) that no bill charged and no
study planned, and kept the window length it found at start-up."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from controller.accounting import Accounting
from controller.planning import PlanKeeper
from optimizer.billing import make_bill
from optimizer.planner import Planner
from optimizer.service import SiteState, TariffSteps
from optimizer.tariff import Tariff
from tests.test_one_path import KnownSeries, scenario

PRESETS = Path(__file__).resolve().parents[1] / "optimizer" / "tariffs"
TZ = "Asia/Ho_Chi_Minh"
MAY_20 = datetime(2026, 5, 20, 3, 0, tzinfo=UTC)  # 10:00 local
JUNE_2 = datetime(2026, 6, 2, 3, 0, tzinfo=UTC)


def mid_month_tariff(tmp_path: Path):
    data = yaml.safe_load((PRESETS / "evn-two-part-22kv.yaml").read_text(encoding="utf-8"))
    data["name"] = "two-part-from-15-may"
    data["demand_charges"] = [{"rate_per_kw_month": 0, "basis": "month_max", "window_minutes": 30},
                              {"from": "2026-05-15", "rate_per_kw_month": 235414, "basis": "month_max",
                               "window_minutes": 15}]
    path = tmp_path / "tariff.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return Tariff.from_file(path).bind(TZ)


def test_the_month_a_demand_charge_starts_in_is_billed_planned_and_defended_alike(tmp_path) -> None:
    site = mid_month_tariff(tmp_path)
    assert site.billed_demand_charge("2026-05").rate_per_kw_month == 0
    assert site.billed_demand_charge("2026-06").window_minutes == 15
    sc = scenario("evn-two-part-22kv")
    starts = pd.date_range("2026-05-10", periods=40 * 96, freq="15min", tz="UTC")
    keeper = PlanKeeper(Planner(sc.battery.spec(), sc.grid, sc.planner, sc.planner.horizon_steps), sc.planner,
                        sc.grid, site, KnownSeries(starts.as_unit("ns").asi8, np.zeros(len(starts)),
                                                   np.full(len(starts), 600.0)), sc.dispatch.follow_tol_kw)
    for now, charged in ((MAY_20, False), (JUNE_2, True)):
        state = SiteState(500.0, 500.0, 500.0, 0.0)
        outcome = asyncio.run(keeper.replan(now, state, 60.0))
        assert outcome.plan is not None, outcome.detail
        offline = TariffSteps.of(site, outcome.plan.starts)  # what a study plans the same steps on
        assert bool(offline.demand_rate[0] > 0) is charged
        assert (keeper.same_month(outcome.plan, now) is not None) is charged  # the live peak defence
        target = keeper.target(now, 900.0)  # a 900 kW month peak is defended under a charge, else at most the cap
        defended = target.grid_ceiling_kw is not None and target.grid_ceiling_kw < sc.grid.import_cap_kw
        assert defended is charged, target
    # the live demand tracker measures each month on its own window; the bill agrees: May 0, June on 15 minutes
    accounting = Accounting(site, TZ, cycle_s=60.0, export_cap_kw=0.0, demand_interval_minutes=30)
    assert accounting.demand.running(MAY_20)[0] == 0.5 and accounting.demand.running(JUNE_2)[0] == 0.25
    year = pd.date_range("2026-05-01", "2026-07-01", freq="15min", inclusive="left", tz=TZ).tz_convert("UTC")
    imp = np.full(len(year), 500.0)
    imp[(year >= pd.Timestamp("2026-06-10T03:00Z")) & (year < pd.Timestamp("2026-06-10T03:15Z"))] = 1500.0
    months = {m.month: m for m in make_bill(site, year, 0.25, imp, np.zeros(len(year))).months}
    assert months["2026-05"].demand_amount == 0.0
    assert months["2026-06"].demand_kw == 1500.0  # one 15-minute window: the 15-minute measure
