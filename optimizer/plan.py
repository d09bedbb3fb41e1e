"""The versioned Plan: what the optimiser (or a fallback policy) decided, per step, with units and signs.

Signs follow docs/conventions.md: ``battery_kw`` + = discharge, ``grid_kw`` + = import. The JSON
form is documented in docs/plan.md (JSON Schema + field table); ``SCHEMA_VERSION`` changes with it.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd

SCHEMA_VERSION = "1.1"

#: Per-step numeric series of a Plan (each a float array, one entry per step).
SERIES = ("duration_h", "battery_kw", "charge_kw", "discharge_kw", "grid_kw", "import_kw", "export_kw",
          "soc_kwh", "pv_kw", "curtail_kw", "load_kw", "import_price", "export_price")


@dataclass(frozen=True)
class Objective:
    """The plan's cost terms on the planner's objective, all in the tariff currency (≥ 0 each).

    ``total = energy_cost − export_revenue + wear + demand − terminal_value + slack_penalty``.
    """

    energy_cost: float
    export_revenue: float
    wear: float
    demand: float
    terminal_value: float
    slack_penalty: float

    @property
    def total(self) -> float:
        """Net cost of the plan on the objective. [currency]"""
        return (self.energy_cost - self.export_revenue + self.wear + self.demand
                - self.terminal_value + self.slack_penalty)


@dataclass(frozen=True)
class SlackUse:
    """A soft constraint the plan had to break.

    ``constraint`` is one of ``soc_min``, ``soc_max`` (unit kWh), ``import_cap``, ``export_cap``,
    ``fixed_battery`` (unit kW); ``max_violation`` is the largest excess over ``steps`` (indices).
    """

    constraint: str
    unit: str
    max_violation: float
    steps: tuple[int, ...]


@dataclass(frozen=True)
class SolverInfo:
    """How the plan was made: solver status and wall-clock times [ms] (0 for policies)."""

    status: str
    build_ms: float = 0.0
    update_ms: float = 0.0
    solve_ms: float = 0.0
    note: str | None = None


@dataclass(frozen=True)
class PlanStep:
    """One step of a plan (see :class:`Plan` for units and signs)."""

    index: int
    start: pd.Timestamp
    duration_h: float
    battery_kw: float
    grid_kw: float
    soc_kwh: float
    curtail_kw: float


@dataclass(frozen=True, eq=False)
class Plan:
    """A dispatch plan over a time grid.

    Attributes
    ----------
    starts : pandas.DatetimeIndex
        Step starts, UTC.
    duration_h, battery_kw, charge_kw, discharge_kw, grid_kw, import_kw, export_kw, soc_kwh, pv_kw,
    curtail_kw, load_kw, import_price, export_price : numpy.ndarray
        Per step: [h]; battery [kW] (+ discharge) = discharge − charge; grid [kW] (+ import) = import −
        export; SOC at the *end* of the step [kWh]; PV available (forecast used) [kW]; curtailment [kW];
        load [kW]; gross import and export price [currency/kWh].
    soc0_kwh : float
        SOC at the start of the first step. [kWh]
    capacity_kwh : float
        The energy the battery was planned to hold at full SOC (its nameplate × the state of health measured at
        planning time, ``SiteState.soh_pct``), for SOC in %. [kWh]
    source : str
        ``optimizer`` or ``policy:<name>``.
    period : tuple of str or None
        Tariff period name per step, if known.
    demand_kw : numpy.ndarray or None
        Under a demand charge: the tariff's demand measure per step (window-average import up to the end of the
        step, :func:`optimizer.costs.window_average_import_kw`); None without one. [kW]
    """

    created_at: datetime
    source: str
    starts: pd.DatetimeIndex
    duration_h: np.ndarray
    battery_kw: np.ndarray
    charge_kw: np.ndarray
    discharge_kw: np.ndarray
    grid_kw: np.ndarray
    import_kw: np.ndarray
    export_kw: np.ndarray
    soc0_kwh: float
    soc_kwh: np.ndarray
    pv_kw: np.ndarray
    curtail_kw: np.ndarray
    load_kw: np.ndarray
    import_price: np.ndarray
    export_price: np.ndarray
    capacity_kwh: float
    objective: Objective
    solver: SolverInfo
    slack: tuple[SlackUse, ...] = ()
    period: tuple[str, ...] | None = None
    demand_kw: np.ndarray | None = None
    schema_version: str = field(default=SCHEMA_VERSION)

    def __post_init__(self) -> None:
        if self.created_at.tzinfo is None:
            raise ValueError("Plan.created_at must be timezone-aware")
        if self.starts.tz is None or str(self.starts.tz) != "UTC":
            raise ValueError("Plan.starts must be UTC")
        for name in SERIES:
            if len(getattr(self, name)) != len(self.starts):
                raise ValueError(f"Plan.{name} has {len(getattr(self, name))} entries for {len(self.starts)} steps")
        if self.demand_kw is not None and len(self.demand_kw) != len(self.starts):
            raise ValueError(f"Plan.demand_kw has {len(self.demand_kw)} entries for {len(self.starts)} steps")

    def __len__(self) -> int:
        return len(self.starts)

    @functools.cached_property
    def end(self) -> pd.Timestamp:
        """End of the last step (UTC); computed once (the plan is frozen, and the controller asks every cycle)."""
        return self.starts[-1] + pd.Timedelta(hours=float(self.duration_h[-1]))

    def expires_at(self, valid_hours: float) -> datetime:
        """When the plan stops being followed (``created_at + valid_hours``, or its end if sooner). [UTC]"""
        return min(self.created_at + timedelta(hours=valid_hours), self.end.to_pydatetime())

    def is_expired(self, now: datetime, valid_hours: float) -> bool:
        """True when ``now`` is at or past :meth:`expires_at`."""
        return now >= self.expires_at(valid_hours)

    def step_at(self, moment: datetime) -> PlanStep | None:
        """The step containing ``moment`` (aware), or None outside the plan."""
        if moment.tzinfo is None:
            raise ValueError("step_at needs a timezone-aware datetime")
        ts = pd.Timestamp(moment).tz_convert("UTC")
        if ts < self.starts[0] or ts >= self.end:
            return None
        i = int(self.starts.searchsorted(ts, side="right")) - 1
        return PlanStep(index=i, start=self.starts[i], duration_h=float(self.duration_h[i]),
                        battery_kw=float(self.battery_kw[i]), grid_kw=float(self.grid_kw[i]),
                        soc_kwh=float(self.soc_kwh[i]), curtail_kw=float(self.curtail_kw[i]))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (schema in docs/plan.md)."""
        out: dict[str, Any] = {
            "schema_version": self.schema_version,
            "created_at": self.created_at.astimezone(UTC).isoformat(),
            "source": self.source,
            "starts": [ts.isoformat() for ts in self.starts],
            "soc0_kwh": float(self.soc0_kwh),
            "capacity_kwh": float(self.capacity_kwh),
        }
        for name in SERIES:
            out[name] = [float(x) for x in getattr(self, name)]
        out["objective"] = {f.name: float(getattr(self.objective, f.name)) for f in fields(Objective)}
        out["objective"]["total"] = float(self.objective.total)
        out["slack"] = [{"constraint": s.constraint, "unit": s.unit, "max_violation": float(s.max_violation),
                         "steps": list(s.steps)} for s in self.slack]
        out["solver"] = {f.name: getattr(self.solver, f.name) for f in fields(SolverInfo)
                         if getattr(self.solver, f.name) is not None}
        if self.period is not None:
            out["period"] = list(self.period)
        if self.demand_kw is not None:
            out["demand_kw"] = [float(x) for x in self.demand_kw]
        return out

    def to_json(self, indent: int | None = None) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Plan:
        """Inverse of :meth:`to_dict`; an unknown major schema version raises ``ValueError``."""
        version = str(data.get("schema_version", ""))
        if version.split(".")[0] != SCHEMA_VERSION.split(".")[0]:
            raise ValueError(f"unsupported plan schema_version {version!r} (this code reads {SCHEMA_VERSION})")
        objective = {k: float(v) for k, v in data["objective"].items() if k != "total"}
        return cls(
            schema_version=version,
            created_at=datetime.fromisoformat(data["created_at"]).astimezone(UTC),
            source=data["source"],
            starts=pd.DatetimeIndex([pd.Timestamp(s) for s in data["starts"]]).tz_convert("UTC"),
            soc0_kwh=float(data["soc0_kwh"]),
            capacity_kwh=float(data["capacity_kwh"]),
            objective=Objective(**objective),
            solver=SolverInfo(**data["solver"]),
            slack=tuple(SlackUse(s["constraint"], s["unit"], float(s["max_violation"]), tuple(s["steps"]))
                        for s in data.get("slack", [])),
            period=tuple(data["period"]) if data.get("period") is not None else None,
            demand_kw=np.asarray(data["demand_kw"], dtype=float) if data.get("demand_kw") is not None else None,
            **{name: np.asarray(data[name], dtype=float) for name in SERIES},
        )

    @classmethod
    def from_json(cls, text: str) -> Plan:
        return cls.from_dict(json.loads(text))
