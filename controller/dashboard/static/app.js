// pv-battery-ems live dashboard: no framework, no CDN. Data: /api/config, /api/events (SSE).
// Numbers and times use Intl with the site's locale and IANA time zone (never the browser's zone).
"use strict";

const LANGS = ["vi", "en", "ja"];
const HISTORY_STEP_MS = 60_000;
const dict = {};
const ui = { cfg: null, lang: "en", locale: "en-GB", state: null, plan: null, history: [], alarmLog: [], commandLog: [] };
const $ = (id) => document.getElementById(id);

// ---------------------------------------------------------------- language and formatting

function pickLanguage(pref) {
  if (pref && pref !== "auto") return pref;
  for (const tag of navigator.languages || [navigator.language || "en"]) {
    const base = tag.slice(0, 2).toLowerCase();
    if (LANGS.includes(base)) return base;
  }
  return "en";
}

async function loadDict(lang) {
  if (!dict[lang]) dict[lang] = await (await fetch(`/static/i18n/${lang}.json`)).json();
}

function t(key, fallback) {
  return (dict[ui.lang] || {})[key] ?? (dict.en || {})[key] ?? fallback ?? key;
}

async function setLanguage(pref) {
  const lang = pickLanguage(pref);
  await Promise.all([loadDict("en"), loadDict(lang)]);
  ui.lang = lang;
  ui.locale = ui.cfg.locale || t("_locale", "en-GB");
  document.documentElement.lang = lang;
  for (const el of document.querySelectorAll("[data-i18n]")) el.textContent = t(el.dataset.i18n, el.textContent);
  for (const el of document.querySelectorAll("[data-i18n-title]")) el.title = t(el.dataset.i18nTitle, el.title);
  $("lang").value = pref || "auto";
  render();
}

function num(value, digits = 1) {
  if (value === null || value === undefined || Number.isNaN(value)) return "–";
  if (Number(value.toFixed(digits)) === 0) value = 0;          // never "-0,0"
  return new Intl.NumberFormat(ui.locale, { minimumFractionDigits: digits, maximumFractionDigits: digits }).format(value);
}

function kw(value) { return value === null || value === undefined ? "–" : `${num(value)} kW`; }

// An amount in the site's currency with ``digits`` decimals (whole units by default)
function money(value, digits = 0) {
  if (value === null || value === undefined) return "–";
  const c = ui.cfg.currency || get(ui.state, "tariff.currency");
  if (!c) return num(value, digits);
  try {
    return new Intl.NumberFormat(ui.locale, { style: "currency", currency: c, minimumFractionDigits: digits,
      maximumFractionDigits: digits }).format(value);
  } catch (err) {
    return `${num(value, digits)} ${c}`;
  }
}

// A price per kWh to at least three significant figures: ¥18.24, $0.12, but ₫1,980
function unitPrice(value) {
  return money(value, value !== null && value !== undefined && Math.abs(value) < 100 ? 2 : 0);
}

function fmtTime(ms, withSeconds = true) {
  const opts = { timeZone: ui.cfg.timezone, hour: "2-digit", minute: "2-digit" };
  if (withSeconds) opts.second = "2-digit";
  return new Intl.DateTimeFormat(ui.locale, opts).format(new Date(ms));
}

// Offset of the site zone from UTC at `ms` [ms], from Intl parts (works for any IANA zone, DST included).
function zoneOffsetMs(ms) {
  const parts = {};
  const fmt = new Intl.DateTimeFormat("en-US", { timeZone: ui.cfg.timezone, hourCycle: "h23", year: "numeric",
    month: "2-digit", day: "2-digit", hour: "2-digit", minute: "2-digit", second: "2-digit" });
  for (const p of fmt.formatToParts(new Date(ms))) parts[p.type] = Number(p.value);
  const asUtc = Date.UTC(parts.year, parts.month - 1, parts.day, parts.hour, parts.minute, parts.second);
  return asUtc - Math.floor(ms / 1000) * 1000;
}

// [start, end) of the site-local day containing `ms` [ms UTC].
function localDay(ms) {
  const local = ms + zoneOffsetMs(ms);
  const midnightLocal = local - (((local % 86_400_000) + 86_400_000) % 86_400_000);
  const start = midnightLocal - zoneOffsetMs(midnightLocal - zoneOffsetMs(ms));
  const nextLocal = midnightLocal + 86_400_000;
  return [start, nextLocal - zoneOffsetMs(nextLocal - zoneOffsetMs(ms))];
}

// ---------------------------------------------------------------- reading messages

function get(obj, path) {
  return path.split(".").reduce((o, k) => (o === null || o === undefined ? undefined : o[k]), obj);
}

function pick(obj, paths) {
  for (const p of paths) {
    const v = get(obj, p);
    if (v !== undefined && v !== null) return v;
  }
  return null;
}

// Power flows of a state: top-level value, else the measurement when its quality is ok.
// Planned values ("plan_battery_kw") are the plan step in force at that state (state.plan).
function flow(state, name) {
  if (!state) return null;
  if (name.startsWith("plan_")) {
    const v = (state.plan || {})[name.slice(5)];
    return typeof v === "number" ? v : null;
  }
  if (typeof state[name] === "number") return state[name];
  const m = (state.measurements || {})[name];
  return m && (m.quality || "ok") === "ok" && typeof m.value === "number" ? m.value : null;
}

const FLOWS = ["pv_kw", "load_kw", "grid_kw", "battery_kw", "soc_pct", "plan_battery_kw", "plan_grid_kw", "plan_soc_pct"];

function recordHistory(state) {
  const ts = Date.parse(state.ts);
  const key = Math.floor(ts / HISTORY_STEP_MS) * HISTORY_STEP_MS;
  let last = ui.history[ui.history.length - 1];
  if (!last || last.ts !== key) {
    last = { ts: key, sums: FLOWS.map(() => 0), counts: FLOWS.map(() => 0) };
    ui.history.push(last);
    const [dayStart] = localDay(ts);
    ui.history = ui.history.filter((r) => r.ts >= dayStart);
  }
  FLOWS.forEach((name, i) => {
    const v = flow(state, name);
    if (v !== null) { last.sums[i] += v; last.counts[i] += 1; }
  });
}

function historyValue(row, name) {
  const i = FLOWS.indexOf(name);
  return row.counts[i] ? row.sums[i] / row.counts[i] : null;
}

function loadSnapshot(snap) {
  ui.state = snap.state;
  ui.plan = snap.plan;
  ui.alarmLog = (snap.alarms || []).slice(-20);
  ui.commandLog = (snap.commands || []).slice(-20);
  const cols = snap.history.columns;
  ui.history = snap.history.rows.map((row) => ({
    ts: row[0],
    sums: FLOWS.map((n) => row[cols.indexOf(n)] ?? 0),
    counts: FLOWS.map((n) => (row[cols.indexOf(n)] === null ? 0 : 1)),
  }));
  render();
}

// ---------------------------------------------------------------- rendering

function setFlow(id, value, forwardWhenPositive) {
  const line = $(`line-${id}`);
  line.classList.remove("forward", "backward");
  if (value !== null && Math.abs(value) >= 0.5) {
    line.classList.add((value > 0) === forwardWhenPositive ? "forward" : "backward");
  }
}

function render() {
  if (!ui.cfg) return;
  $("site").textContent = ui.cfg.site;
  const s = ui.state;
  const pv = flow(s, "pv_kw"), load = flow(s, "load_kw"), grid = flow(s, "grid_kw"), bat = flow(s, "battery_kw");
  const soc = flow(s, "soc_pct");
  $("pv-kw").textContent = kw(pv);
  $("load-kw").textContent = kw(load);
  $("grid-kw").textContent = kw(grid);
  $("battery-kw").textContent = kw(bat);
  // lines are drawn towards the bus for PV and grid, away from it for load and battery
  setFlow("pv", pv, true);
  setFlow("grid", grid, true);
  setFlow("load", load, true);
  setFlow("battery", bat, false);
  $("soc-pct").textContent = soc === null ? "–" : `${num(soc)} %`;
  $("soc-bar").style.height = `${Math.max(0, Math.min(100, soc ?? 0))}%`;
  $("soc-meter").setAttribute("aria-valuenow", soc ?? "");
  renderBatteryEnergy(s, soc);
  const mode = s ? s.mode : null;
  $("mode").textContent = mode ? t(`mode.${mode}`, mode) : "–";
  $("mode").className = `badge ${mode || ""}`;
  const reason = s ? pick(s, ["reason", "mode_reason"]) : null;
  $("reason").textContent = reason ? t(`reason.${reason}`, reason) : "–";
  $("setpoint").textContent = kw(pick(s, ["setpoints.battery_kw", "decision.battery_setpoint_kw", "battery_setpoint_kw"]));
  const period = pick(s, ["tariff.period", "tariff_period"]);
  const price = pick(s, ["tariff.price_per_kwh", "tariff.import_price", "price_per_kwh"]);
  $("tariff").textContent = s ? `${period ? t(`period.${period}`, period) : "–"} · ${unitPrice(price)}/kWh` : "–";
  $("updated").textContent = s && s.ts ? fmtTime(Date.parse(s.ts)) : "–";
  $("clock").textContent = `${t("site_time")} ${fmtTime(nowMs())}`;
  renderMoney(s);
  renderDemand(s);
  renderAccuracy(s);
  renderForecastSources(s);
  renderExternalAccuracy(s);
  const energies = $("energies");
  energies.replaceChildren();
  for (const key of ["pv_kwh", "load_kwh", "import_kwh", "export_kwh", "charge_kwh", "discharge_kwh"]) {
    const v = pick(s, [`today.${key}`, `energies_today.${key}`]);
    if (v === null) continue;
    const dt = document.createElement("dt");
    dt.textContent = t(key);
    const dd = document.createElement("dd");
    dd.textContent = `${num(v, 0)} kWh`;
    energies.append(dt, dd);
  }
  renderAlarms();
  renderCharts();
}

// The energy behind the SOC: what the battery holds now (nameplate × measured state of health) and what is stored;
// while a unit is out of its group, what the units in use hold (plans are made for them).
function renderBatteryEnergy(s, soc) {
  const b = s && s.battery;
  const el = $("soc-energy");
  if (!b || !Number.isFinite(b.capacity_kwh)) { el.textContent = ""; return; }
  if (Number.isFinite(b.in_use_kwh)) {   // a unit out of its group: its energy is not the battery's now
    el.textContent = fill(t("energy_in_use"), { stored: num(b.in_use_stored_kwh, 0), capacity: num(b.in_use_kwh, 0),
                                                nameplate: num(b.nameplate_kwh, 0) });
    return;
  }
  const vars = { stored: soc === null ? "–" : num(soc / 100 * b.capacity_kwh, 0), capacity: num(b.capacity_kwh, 0),
                 soh: b.soh_pct === null ? "" : num(b.soh_pct, 0), nameplate: num(b.nameplate_kwh, 0) };
  el.textContent = fill(t(b.soh_pct === null ? "energy_nameplate" : "energy_soh"), vars);
}

function pct(value) { return value === null || value === undefined || !Number.isFinite(value) ? "–" : `${num(value, 0)} %`; }

// A saving's colour class: red below zero, plain at zero, green (the .money default) above [currency].
function moneySign(value) {
  return value !== null && value < -0.5 ? " negative" : value !== null && value <= 0.5 ? " zero" : "";
}

// "Saved today" with its explanation: a negative figure is red and says why (charged for a coming peak).
function renderMoney(s) {
  const saved = pick(s, ["today.saved", "today.savings", "today.money_saved", "saved_today"]);
  const box = $("saved-today");
  box.textContent = money(saved);
  box.className = `big money${moneySign(saved)}`;
  const v = (k) => pick(s, [`today.${k}`]);
  const charge = v("charge_kwh"), discharge = v("discharge_kwh"), cost = v("cost"), base = v("cost_no_battery");
  const parts = [];
  if (charge !== null && discharge !== null) {
    parts.push(fill(t("explain.battery"), { charge: num(charge, 0), discharge: num(discharge, 0) }));
  }
  if (cost !== null && base !== null) parts.push(fill(t("explain.cost"), { cost: money(cost), base: money(base) }));
  const expected = v("expected_saved");
  if (expected !== null) parts.push(fill(t("explain.expected"), { expected: money(expected) }));
  if (saved !== null && saved < -0.5) {
    parts.push(t(charge !== null && discharge !== null && charge > discharge ? "explain.negative_charging"
      : "explain.negative_losses"));
  }
  $("saved-explain").textContent = parts.join(" ");
  // the billing month so far, demand (capacity) charge included: under a two-part tariff most of the value
  const m = s && s.month ? s.month : null;
  $("saved-month").textContent = money(m ? m.saved : null);
  $("saved-month").className = `money${moneySign(m ? m.saved : null)}`;
  const month = [];
  if (m) {
    month.push(fill(t("explain.month_energy"), { energy: money(m.energy_saved) }));
    if (m.billed_kw !== null && m.billed_kw !== undefined) {
      month.push(fill(t("explain.month_demand"), { demand: money(m.demand_saved), billed: kw(m.billed_kw),
        nobattery: kw(m.billed_kw_no_battery) }));
    }
  }
  $("month-explain").textContent = month.join(" ");
  const pv = v("pv_kwh"), exp = v("export_kwh");
  $("load-supply").textContent = loadSupply([v("load_from_pv_kwh"), v("load_from_battery_kwh"),
    v("load_from_grid_kwh")]);
  $("self-consumption").textContent = pv > 0 && exp !== null ? pct(100 * Math.max(0, pv - exp) / pv) : "–";
}

// Where today's load came from at the time: "PV 32 % · battery 4 % · grid 64 %" (whole percent by the largest
// remainder, so the three add up to 100; "–" until a load has been accounted).
function loadSupply(kwh) {
  if (kwh.some((x) => x === null || !Number.isFinite(x))) return "–";
  const total = kwh.reduce((a, b) => a + b, 0);
  if (total <= 0) return "–";
  const exact = kwh.map((x) => (100 * x) / total), whole = exact.map(Math.floor);
  let left = 100 - whole.reduce((a, b) => a + b, 0);
  exact.map((x, i) => [x - whole[i], i]).sort((a, b) => b[0] - a[0]).forEach(([, i]) => { if (left > 0) { whole[i] += 1; left -= 1; } });
  return ["supply.pv", "supply.battery", "supply.grid"].map((key, i) => `${t(key)}\u00a0${num(whole[i], 0)}\u00a0%`)
    .join(" · ");
}

// Month-to-date 30-min peak against the contracted capacity and the highest import the current plan allows.
// Forecast accuracy by lead time (state key forecast_accuracy): MAE and skill against same-time-yesterday persistence.
function renderAccuracy(s) {
  const table = $("accuracy-table");
  const acc = s ? s.forecast_accuracy : null;
  table.replaceChildren();
  const rows = acc ? [["pv", acc.pv], ["load", acc.load]].filter(([, q]) => q && q.issues > 0) : [];
  if (!rows.length) {
    const td = document.createElement("td");
    td.textContent = t("fa.none");
    table.append(document.createElement("tr"));
    table.lastChild.append(td);
    return;
  }
  const head = document.createElement("tr");
  for (const key of ["fa.lead", "fa.mae", "fa.skill"]) {
    const th = document.createElement("th");
    th.textContent = t(key);
    head.append(th);
  }
  table.append(head);
  for (const [name, q] of rows) {
    const title = document.createElement("tr");
    const th = document.createElement("th");
    th.colSpan = 3;
    th.textContent = t(`fa.${name}`);
    title.append(th);
    table.append(title);
    for (const b of q.by_lead) {
      if (!b.n) continue;
      const tr = document.createElement("tr");
      for (const text of [b.lead, kw(b.mae_kw), b.skill === null ? "–" : pct(100 * b.skill)]) {
        const td = document.createElement("td");
        td.textContent = text;
        tr.append(td);
      }
      table.append(tr);
    }
  }
}

// How good the forecasts from outside were (state key forecast_accuracy.external): per quantity and source, by lead
// from their issue time, MAE, skill against the built-in model's forecast made at the same time, and the share of
// measurements inside their P10–P90 band (80 % when calibrated). Hidden until a forecast from outside was received.
function renderExternalAccuracy(s) {
  const table = $("external-accuracy-table");
  const ext = s && s.forecast_accuracy ? s.forecast_accuracy.external : null;
  const groups = ext ? [["pv", ext.pv], ["load", ext.load]].flatMap(([name, list]) => (list || []).map((g) => [name, g])) : [];
  for (const id of ["external-accuracy-title", "external-accuracy-table", "external-accuracy-explain"]) {
    $(id).hidden = !groups.length;
  }
  table.replaceChildren();
  if (!groups.length) return;
  const cell = (tag, text, span) => {
    const el = document.createElement(tag);
    el.textContent = text;
    if (span) el.colSpan = span;
    return el;
  };
  const head = document.createElement("tr");
  for (const key of ["fa.lead", "fa.mae", "fx.vs_builtin", "fx.band"]) head.append(cell("th", t(key)));
  table.append(head);
  for (const [name, g] of groups) {
    const title = document.createElement("tr");
    const scaled = g.band_scale_p10 !== 1 || g.band_scale_p90 !== 1
      ? `; ${t("fx.scaled")} ×${g.band_scale_p10.toFixed(2)} / ×${g.band_scale_p90.toFixed(2)}` : "";
    title.append(cell("th", `${t(`fa.${name}`)}: ${g.source} (${g.issues} ${t("fx.issues")}${scaled})`, 4));
    table.append(title);
    const rows = g.by_lead.filter((b) => b.n);
    if (!rows.length) {
      const tr = document.createElement("tr");
      tr.append(cell("td", t("fx.pending"), 4));
      table.append(tr);
    }
    for (const b of rows) {
      const tr = document.createElement("tr");
      tr.append(cell("td", b.lead), cell("td", kw(b.mae_kw)),
        cell("td", b.skill_vs_builtin === null ? "–" : pct(100 * b.skill_vs_builtin)),
        cell("td", b.band_coverage === null ? "–" : pct(100 * b.band_coverage)));
      table.append(tr);
    }
  }
}

// Which PV and load forecast the planner uses now (state key forecast_sources): built-in, or from outside until it
// expires (with its P10/P90 band or not).
function renderForecastSources(s) {
  const list = $("forecast-sources");
  const src = s ? s.forecast_sources : null;
  list.replaceChildren();
  if (!src) return;
  for (const name of ["pv_kw", "load_kw"]) {
    const f = src[name];
    if (!f) continue;
    const li = document.createElement("li");
    const what = t(name === "pv_kw" ? "fs.pv" : "fs.load");
    li.textContent = f.source === "builtin" ? `${what}: ${t("fs.builtin")}`
      : `${what}: ${f.source}, ${t(f.band ? "fs.band" : "fs.noband")}, ${t("fs.until")} ${fmtTime(Date.parse(f.expires_at), false)}`;
    list.append(li);
  }
}

// When the month's peak was set (the state's demand.month_peak_at: the interval's start, by the bills' rule) in site
// time, and the tariff period then: "Mon 04 May, 08:30 · normal" in English.
function peakSet(at, period) {
  if (!at) return "–";
  const when = new Intl.DateTimeFormat(ui.locale, { timeZone: ui.cfg.timezone, weekday: "short", day: "2-digit",
    month: "short", hour: "2-digit", minute: "2-digit" }).format(new Date(Date.parse(at)));
  return period ? `${when} · ${t(`period.${period}`, period)}` : when;   // a tariff's own name where none is known
}

// The plan's highest import over the steps still ahead in `month`, as the month's peak is measured: the average
// over each demand window of `windowMin` minutes on the clock (a quarter hour at 614 kW beside one at 586 kW is a
// half hour at 600 kW); a step as long as the window or longer is its own average. [kW]; null without steps ahead.
function plannedPeak(p, windowMin, month) {
  const windowMs = (windowMin || 0) * 60_000;
  const byWindow = new Map();
  let planned = null;
  p.starts.forEach((st, i) => {
    const ts = Date.parse(st), stepMs = p.duration_h[i] * 3_600_000;
    if (ts + stepMs <= nowMs() || (month && !isoDay(ts).startsWith(month))) return;
    if (stepMs >= windowMs) {
      planned = Math.max(planned ?? 0, p.import_kw[i]);
    } else {
      const start = Math.floor(ts / windowMs) * windowMs;
      byWindow.set(start, (byWindow.get(start) ?? 0) + (p.import_kw[i] * stepMs) / windowMs);
    }
  });
  for (const kwAverage of byWindow.values()) planned = Math.max(planned ?? 0, kwAverage);
  return planned;
}

function renderDemand(s) {
  // no demand window closed yet this month (no time it was set): no peak to show, not a peak of 0 kW
  const peakAt = pick(s, ["demand.month_peak_at"]);
  const peak = peakAt === null ? null : pick(s, ["demand.month_peak_kw"]), cap = pick(s, ["demand.import_cap_kw"]);
  const p = ui.plan;
  const month = pick(s, ["demand.month"]);
  const hold = pick(s, ["demand.hold_kw"]);   // under a demand charge: the level held, on the tariff's own measure
  let planned = hold;   // otherwise: the plan's highest import still ahead this month, on the card's own measure
  if (hold === null && p && p.starts && p.import_kw) {
    planned = plannedPeak(p, pick(s, ["demand.window_minutes"]), month);
    if (planned !== null && peak !== null) planned = Math.max(planned, peak);
  }
  // under a 12-month basis the month is billed on a higher peak of the 11 months before: shown only then
  const billed = pick(s, ["demand.billed_kw"]);
  const carried = billed !== null && (peak === null || billed > peak + 0.05);
  const level = carried ? billed : peak;   // the level the month is billed on so far
  $("mtd-billed").textContent = carried ? `${kw(billed)} · ${t("billed_twelve")}` : "–";
  $("mtd-billed").hidden = $("mtd-billed-label").hidden = !carried;
  $("mtd-peak").textContent = kw(peak);
  $("mtd-set").textContent = peakSet(peakAt, pick(s, ["demand.month_peak_period"]));
  $("mtd-cap").textContent = kw(cap);
  $("mtd-planned").textContent = kw(planned);
  // the window's length is the tariff's measure (15, 30 or 60 min); its import so far builds up to its average
  const windowMin = pick(s, ["demand.window_minutes"]), elapsed = pick(s, ["demand.window_elapsed_min"]);
  $("mtd-title").textContent = windowMin === null ? t("month_peak")
    : fill(t("month_peak_window"), { min: num(windowMin, 0) });
  const soFar = pick(s, ["demand.interval_avg_kw"]);
  $("mtd-now").textContent = soFar === null || windowMin === null || elapsed === null ? kw(soFar)
    : fill(t("window_so_far"), { kw: kw(soFar), elapsed: num(Math.floor(elapsed), 0), min: num(windowMin, 0) });
  $("mtd-now").title = t("window_so_far_tip");
  const projected = pick(s, ["demand.window_projected_kw"]), left = pick(s, ["demand.window_left_min"]);
  $("mtd-projected").textContent = projected === null ? "–"
    : `${kw(projected)} · ${fill(t("window_left"), { min: num(left, 0) })}`;
  $("mtd-projected").hidden = $("mtd-projected-label").hidden = projected === null;   // no demand charge: no row
  const scale = Math.max(cap || 0, planned || 0, peak || 0) || 1;
  $("mtd-bar").style.width = `${Math.min(100, (100 * (peak || 0)) / scale)}%`;
  const mark = $("mtd-planned-mark");
  mark.style.display = planned === null ? "none" : "block";
  mark.style.left = `${Math.min(99, (100 * (planned || 0)) / scale)}%`;
  const notes = [];
  if (peak !== null && cap) notes.push(fill(t("explain.of_cap"), { pct: num((100 * peak) / cap, 0) }));
  if (level !== null && planned !== null && planned > level + 0.5) notes.push(t("explain.plan_raises_peak"));
  const shed = pick(s, ["demand.shed_to_hold_kw"]);
  if (shed !== null && shed >= 0.05) {
    notes.push(fill(t("explain.shed"), { kw: kw(shed), min: num(left, 0), hold: kw(hold) }));
  }
  $("mtd-explain").textContent = notes.join(" ");
}

// An alarm as a sentence in the page's language with an action hint; the code and the controller's own
// (English) message only in a collapsible detail. Codes with a device/point ("point_stale:meter:grid_kw")
// are translated by their prefix.
function alarmParts(code) {
  const [prefix, device = "", point = ""] = String(code).split(":");
  return { prefix, device, point };
}

function fill(text, vars) {
  return text.replace(/\{(\w+)\}/g, (m, k) => (vars[k] !== undefined && vars[k] !== "" ? vars[k] : m));
}

function alarmSentence(code) {
  const parts = alarmParts(code);
  const key = dict[ui.lang]?.[`alarm.${parts.prefix}`] !== undefined || dict.en?.[`alarm.${parts.prefix}`] !== undefined
    ? parts.prefix : "unknown";
  return { text: fill(t(`alarm.${key}`), parts), hint: fill(t(`hint.${key}`), parts) };
}

function alarmItem(code, message, since) {
  const li = document.createElement("li");
  li.dataset.code = code;
  const { text, hint } = alarmSentence(code);
  const head = document.createElement("div");
  head.className = "alarm-text";
  head.textContent = since ? `${text} (${t("since")} ${fmtTime(Date.parse(since), false)})` : text;
  const advice = document.createElement("div");
  advice.className = "alarm-hint";
  advice.textContent = hint;
  const details = document.createElement("details");
  const summary = document.createElement("summary");
  summary.textContent = t("details");
  const raw = document.createElement("code");
  raw.textContent = message ? `${code}: ${message}` : code;
  details.append(summary, raw);
  li.append(head, advice, details);
  return li;
}

function activeAlarms() {
  const s = ui.state || {};
  const info = s.active_alarms || {};
  return (s.alarms || []).map((a) => (typeof a === "string" ? a : a.code || a.name)).map((code) => {
    const logged = ui.alarmLog.filter((x) => x.code === code && x.active !== false).pop();
    return { code, message: info[code]?.message || logged?.message || "", since: info[code]?.ts || logged?.ts };
  });
}

function renderAlarms() {
  const list = $("alarms");
  const active = activeAlarms();
  list.replaceChildren();
  if (!active.length) {
    const li = document.createElement("li");
    li.textContent = t("no_alarms");
    li.className = "none";
    list.append(li);
  }
  for (const a of active) list.append(alarmItem(a.code, a.message, a.since));
  const log = $("alarm-log");
  log.replaceChildren();
  for (const a of ui.alarmLog.slice().reverse()) {
    const li = document.createElement("li");
    const when = a.ts ? fmtTime(Date.parse(a.ts)) : "";
    li.textContent = `${when} ${alarmSentence(a.code || "").text} (${t(a.active === false ? "cleared" : "raised")})`;
    li.title = a.code || "";
    log.append(li);
  }
  renderHealth();
  renderBadge(active);
  renderCommands();
}

// The audit log's newest entries: time, interface, who, command, accepted or rejected and why.
function renderCommands() {
  const list = $("command-log");
  list.replaceChildren();
  if (!ui.commandLog.length) {
    const li = document.createElement("li");
    li.textContent = t("no_commands");
    li.className = "none";
    list.append(li);
  }
  for (const c of ui.commandLog.slice().reverse()) {
    const li = document.createElement("li");
    const when = c.ts ? fmtTime(Date.parse(c.ts)) : "";
    const who = c.identity ? `${t(`via.${c.interface}`, c.interface)} ${c.identity}` : t(`via.${c.interface}`, c.interface);
    li.textContent = `${when} ${c.command} · ${who} · ${t(c.accepted ? "cmd_accepted" : "cmd_rejected")}`;
    li.title = c.reason || "";
    li.className = c.accepted ? "accepted" : "rejected";
    list.append(li);
  }
}

// A unit's measured power for the devices table: "29.8 kW", "–" when it was not read, "" where there is none [kW].
function unitPower(value) {
  if (value === undefined) return "";
  return value === null || !Number.isFinite(value) ? "–" : `${num(value, 1)} kW`;
}

function renderHealth() {
  const body = $("health");
  const health = (ui.state && ui.state.health) || {};
  body.replaceChildren();
  for (const [device, h] of Object.entries(health)) {
    const tr = document.createElement("tr");
    tr.dataset.device = device;
    tr.dataset.status = h.status;
    tr.className = `health-${h.status}`;
    const d = (ui.state && ui.state.devices && ui.state.devices[device]) || {};
    const issues = [...(h.points || [])];
    if (d.in_group === false) issues.push(d.reason ? `${t("unit_out_of_group")}: ${d.reason}` : t("unit_out_of_group"));
    const cells = [device, t(`health.${h.status}`, h.status), unitPower(d.measured_kw),
      d.setpoint === null || d.setpoint === undefined ? "" : `${num(d.setpoint, d.setpoint_unit === "%" ? 0 : 1)} ${d.setpoint_unit}`,
      d.soc_pct === null || d.soc_pct === undefined ? "" : pct(d.soc_pct), issues.join(", "),
      h.since ? fmtTime(Date.parse(h.since), false) : "–"];
    cells.forEach((text, i) => {
      const td = document.createElement("td");
      td.textContent = text;
      if (i >= 2 && i <= 4) td.className = "num";
      tr.append(td);
    });
    body.append(tr);
  }
}

// Header badge: red when the page has lost the stream, the controller is in its safe state or a device is
// unreachable/missing; amber with any other active alarm; green "live" only with none.
function renderBadge(active) {
  const conn = $("conn");
  if (conn.dataset.i18n === "offline" || conn.dataset.i18n === "connecting") return;
  const severe = active.some((a) => ["device_unreachable", "point_missing", "data_missing", "planner_failed"]
    .includes(alarmParts(a.code).prefix)) || (ui.state && ui.state.mode === "safe");
  const level = severe ? "alarm" : active.length ? "warn" : "";
  conn.className = `conn ${level}`.trim();
  conn.textContent = level ? `${t("live")} · ${active.length} ${t("active_alarms")}` : t("live");
}

// ---------------------------------------------------------------- charts (inline SVG)

const SVG = "http://www.w3.org/2000/svg";

function el(tag, attrs, parent) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (parent) parent.append(node);
  return node;
}

function pathOf(points, x, y) {
  let d = "";
  let pen = false;
  for (const [tx, v] of points) {
    if (v === null || v === undefined) { pen = false; continue; }
    d += `${pen ? "L" : "M"}${x(tx).toFixed(1)},${y(v).toFixed(1)}`;
    pen = true;
  }
  return d;
}

// Plan steps as a step function: [[t, v], [t_end, v], ...] for one per-step series.
// Only the steps not yet over: what was planned for past steps comes from the history (plan_* columns).
function planSteps(series) {
  const p = ui.plan;
  if (!p || !p.starts || !p[series]) return [];
  const now = nowMs();
  const out = [];
  p.starts.forEach((s, i) => {
    const t0 = Date.parse(s);
    const t1 = t0 + p.duration_h[i] * 3_600_000;
    if (t1 > now) out.push([Math.max(t0, now), p[series][i]], [t1, p[series][i]]);
  });
  return out;
}

function nowMs() { return ui.state && ui.state.ts ? Date.parse(ui.state.ts) : Date.now(); }

function planSoc() {
  const p = ui.plan;
  if (!p || !p.starts || !p.soc_kwh || !p.capacity_kwh) return [];
  const pct = (kwh) => (100 * kwh) / p.capacity_kwh;
  const out = [[Date.parse(p.starts[0]), pct(p.soc0_kwh)]];
  p.starts.forEach((s, i) => out.push([Date.parse(s) + p.duration_h[i] * 3_600_000, pct(p.soc_kwh[i])]));
  return out;
}

// Round tick values: steps of 1, 2 or 5 × 10^k, about `n` of them over [lo, hi].
function niceTicks(lo, hi, n = 4) {
  const raw = (hi - lo) / n;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 5, 10].map((m) => m * mag).find((s) => s >= raw) || 10 * mag;
  const out = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) out.push(Math.abs(v) < step * 1e-9 ? 0 : v);
  return { step, ticks: out };
}

function fmtDate(ms) {
  return new Intl.DateTimeFormat(ui.locale, { timeZone: ui.cfg.timezone, day: "2-digit", month: "2-digit" }).format(new Date(ms));
}

// Site-local midnights in [t0, t1] (DST-safe: each is the start of the next local day).
function midnights(t0, t1) {
  const out = [];
  for (let m = t0; m <= t1 && out.length < 40; m = localDay(m + 3_600_000)[1]) out.push(m);
  return out;
}

// A chart's drawing area in the chart's own CSS pixels: its viewBox is as wide as the chart is on screen, so the
// labels keep their size and shape on a phone and on a wide screen (a fixed 900-unit viewBox stretched to the width
// squeezed them to 40 % of their width on a 390 px phone).
function chartFrame(svg, height, t0, t1) {
  const W = Math.round(svg.getBoundingClientRect().width) || 900, pad = { l: 58, r: 8, t: 8, b: 20 };
  svg.setAttribute("viewBox", `0 0 ${W} ${height}`);
  return { W, pad, x: (ts) => pad.l + ((ts - t0) / (t1 - t0)) * (W - pad.l - pad.r) };
}

function drawChart(svg, height, series, yFixed, unit) {
  svg.replaceChildren();
  const now = nowMs();
  const [t0, t1] = chartRange();
  const { W, pad, x } = chartFrame(svg, height, t0, t1);
  const inDay = (pts) => pts.filter(([ts]) => ts >= t0 && ts <= t1);
  const all = series.flatMap((s) => inDay(s.points).map(([, v]) => v)).filter((v) => v !== null);
  let [lo, hi] = yFixed || [Math.min(0, ...all), Math.max(1, ...all)];
  let ticks;
  if (yFixed) ticks = niceTicks(lo, hi, 4).ticks;
  else {
    const nice = niceTicks(lo, hi, 4);
    lo = Math.floor(lo / nice.step) * nice.step;
    hi = Math.ceil(hi / nice.step) * nice.step;
    ticks = niceTicks(lo, hi, Math.round((hi - lo) / nice.step)).ticks;
  }
  const y = (v) => pad.t + (1 - (v - lo) / (hi - lo)) * (height - pad.t - pad.b);
  shadeTariff(svg, x, t0, t1, pad, height);
  for (const v of ticks) {
    el("line", { x1: pad.l, x2: W - pad.r, y1: y(v), y2: y(v), class: v === 0 ? "axis zero" : "axis" }, svg);
    el("text", { x: 2, y: y(v) + 4, class: "tick ytick" }, svg).textContent = `${num(v, 0)} ${unit}`;
  }
  if (viewSpan() === "day") {
    const every = (W - pad.l - pad.r) / 8 < 44 ? 6 : 3;   // hours between labels: a label needs ~40 px
    for (let h = 0; h <= 24; h += every) {
      const tx = t0 + h * 3_600_000;
      el("line", { x1: x(tx), x2: x(tx), y1: pad.t, y2: height - pad.b, class: "axis" }, svg);
      if (h < 24) el("text", { x: x(tx) + 2, y: height - 5, class: "tick xtick" }, svg).textContent = fmtTime(tx, false);
    }
  } else {
    const days = midnights(t0, t1);
    days.forEach((m, i) => {
      el("line", { x1: x(m), x2: x(m), y1: pad.t, y2: height - pad.b, class: "axis" }, svg);
      const label = viewSpan() === "week" || i % 5 === 0;
      if (label && m < t1) el("text", { x: x(m) + 2, y: height - 5, class: "tick xtick" }, svg).textContent = fmtDate(m);
    });
  }
  for (const s of series) el("path", { d: pathOf(inDay(s.points), x, y), class: s.cls }, svg);
  if (now >= t0 && now <= t1) el("line", { x1: x(now), x2: x(now), y1: pad.t, y2: height - pad.b, class: "now" }, svg);
}

// ---------------------------------------------------------------- day / week / month navigation

function viewSpan() { return ui.view ? ui.view.span : "day"; }

function chartRange() {
  if (ui.view && ui.view.data) return [ui.view.data.start_ms, ui.view.data.end_ms];
  return localDay(nowMs());
}

// Rows of the drawn range: today's live buckets, or the stored history of the chosen day/week/month.
function chartRows() {
  if (!ui.view) return { rows: ui.history, step: HISTORY_STEP_MS };
  if (!ui.view.data) return { rows: [], step: HISTORY_STEP_MS };
  const d = ui.view.data;
  const cols = d.columns;
  return { step: d.step_ms, rows: d.rows.map((row) => ({
    ts: row[0],
    sums: FLOWS.map((n) => row[cols.indexOf(n)] ?? 0),
    counts: FLOWS.map((n) => (row[cols.indexOf(n)] === null || row[cols.indexOf(n)] === undefined ? 0 : 1)),
  })) };
}

function shiftDay(iso, span, sign) {
  const [y, m, d] = iso.split("-").map(Number);
  const dt = new Date(Date.UTC(y, m - 1, d));
  if (span === "month") dt.setUTCMonth(dt.getUTCMonth() + sign, 1);
  else dt.setUTCDate(dt.getUTCDate() + sign * (span === "week" ? 7 : 1));
  return dt.toISOString().slice(0, 10);
}

async function showView(day, span) {
  const today = isoDay(nowMs());
  if (span === "day" && day === today) {
    ui.view = null;
  } else {
    ui.view = { day, span, data: null };
    const resp = await fetch(`/api/history?day=${day}&span=${span}`);
    const data = await resp.json();
    if (ui.view && ui.view.day === day && ui.view.span === span) ui.view.data = data;
  }
  render();
}

function setupNavigation() {
  const span = () => $("nav-span").value;
  const current = () => (ui.view ? ui.view.day : isoDay(nowMs()));
  $("nav-prev").addEventListener("click", () => showView(shiftDay(current(), span(), -1), span()));
  $("nav-next").addEventListener("click", () => showView(shiftDay(current(), span(), 1), span()));
  $("nav-today").addEventListener("click", () => showView(isoDay(nowMs()), span()));
  $("nav-span").addEventListener("change", () => showView(current(), span()));
}

function renderNavLabel() {
  const label = $("nav-label");
  if (!ui.cfg || !label) return;
  const [t0, t1] = chartRange();
  label.dataset.day = ui.view ? ui.view.day : isoDay(nowMs());
  $("nav-csv").href = `/api/history.csv?day=${label.dataset.day}&span=${viewSpan()}`;
  const long = (ms) => new Intl.DateTimeFormat(ui.locale, { timeZone: ui.cfg.timezone, dateStyle: "medium" })
    .format(new Date(ms));
  label.textContent = viewSpan() === "day" ? `${ui.view ? "" : `${t("today")} · `}${long(t0)}`
    : `${fmtDate(t0)} – ${long(t1 - 1)}`;
  $("chart-title").textContent = ui.view ? t("history_title") : t("plan_vs_actual");
}

// The tariff's named periods of the drawn day (from /api/periods, computed by the server from the tariff).
const PERIOD_COLOURS = { peak: "shade-peak", normal: "shade-normal", off_peak: "shade-off_peak", offpeak: "shade-off_peak" };
const periodCache = {};

function isoDay(ms) {
  const f = new Intl.DateTimeFormat("en-CA", { timeZone: ui.cfg.timezone, year: "numeric", month: "2-digit", day: "2-digit" });
  return f.format(new Date(ms));
}

function periodsFor(dayStart) {
  const day = isoDay(dayStart + 3_600_000);
  if (!(day in periodCache)) {
    periodCache[day] = null;
    fetch(`/api/periods?day=${day}`).then((r) => r.json()).then((p) => {
      periodCache[day] = p || { names: [], intervals: [] };
      scheduleRender();
    }).catch(() => { delete periodCache[day]; });
  }
  return periodCache[day];
}

function periodClass(name, names) {
  return PERIOD_COLOURS[name] || `shade-other${names.indexOf(name) % 3}`;
}

function shadeTariff(svg, x, t0, t1, pad, height) {
  for (const day of midnights(t0, t1 - 1)) shadeDay(svg, x, periodsFor(day), t0, t1, pad, height);
}

function shadeDay(svg, x, p, t0, t1, pad, height) {
  if (!p) return;
  for (const [a, b, name] of p.intervals) {
    if (b <= t0 || a >= t1) continue;
    const rect = el("rect", { x: x(Math.max(a, t0)), y: pad.t, width: Math.max(0, x(Math.min(b, t1)) - x(Math.max(a, t0))),
      height: height - pad.t - pad.b, class: `shade ${periodClass(name, p.names)}`,
      "data-period": name, "data-start": a, "data-end": b }, svg);
    el("title", {}, rect).textContent = `${t(`period.${name}`, name)} ${fmtTime(a, false)}–${fmtTime(b, false)}`;
  }
}

function renderPeriodLegend(t0) {
  const legend = $("period-legend");
  const p = periodsFor(t0);
  legend.replaceChildren();
  if (!p) return;
  for (const name of p.names) {
    if (!p.intervals.some(([, , n]) => n === name)) continue;
    const span = document.createElement("span");
    span.className = `key ${periodClass(name, p.names)}`;
    span.dataset.period = name;
    span.textContent = t(`period.${name}`, name);
    legend.append(span);
  }
}

// One hover target per 15-minute step of the past: its title reads what was planned beside what happened.
const STEP_MS = 900_000;
function stepTargets(svg, height, t0, t1, rows) {
  const { pad, x } = chartFrame(svg, height, t0, t1);
  const steps = new Map();
  for (const r of rows) {
    if (r.ts < t0 || r.ts >= t1) continue;
    const key = Math.floor(r.ts / STEP_MS) * STEP_MS;
    if (!steps.has(key)) steps.set(key, []);
    steps.get(key).push(r);
  }
  const mean = (rows, name) => {
    const v = rows.map((r) => historyValue(r, name)).filter((n) => n !== null);
    return v.length ? v.reduce((a, b) => a + b, 0) / v.length : null;
  };
  for (const [key, rows] of steps) {
    const vals = {};
    for (const n of ["battery_kw", "plan_battery_kw", "grid_kw", "plan_grid_kw"]) vals[n] = mean(rows, n);
    const rect = el("rect", { x: x(key), y: pad.t, width: Math.max(0, x(key + STEP_MS) - x(key)),
      height: height - pad.t - pad.b, class: "step", "data-start": key,
      "data-battery-plan": vals.plan_battery_kw ?? "", "data-battery-actual": vals.battery_kw ?? "" }, svg);
    el("title", {}, rect).textContent = `${fmtTime(key, false)}–${fmtTime(key + STEP_MS, false)}\n`
      + `${t("battery")}: ${t("planned")} ${kw(vals.plan_battery_kw)}, ${t("measured")} ${kw(vals.battery_kw)}\n`
      + `${t("grid")}: ${t("planned")} ${kw(vals.plan_grid_kw)}, ${t("measured")} ${kw(vals.grid_kw)}`;
  }
}

function renderCharts() {
  const [d0, d1] = chartRange();
  renderPeriodLegend(d0);
  renderNavLabel();
  const { rows, step } = chartRows();
  const actual = (name) => rows.map((r) => [r.ts + step / 2, historyValue(r, name)]);
  drawChart($("chart-power"), 240, [
    { points: actual("plan_battery_kw"), cls: "battery-plan past" },
    { points: actual("plan_grid_kw"), cls: "grid-plan past" },
    { points: planSteps("battery_kw"), cls: "battery-plan" },
    { points: planSteps("grid_kw"), cls: "grid-plan" },
    { points: actual("battery_kw"), cls: "battery-actual" },
    { points: actual("grid_kw"), cls: "grid-actual" },
  ], null, "kW");
  if (viewSpan() === "day") stepTargets($("chart-power"), 240, d0, d1, rows);
  drawChart($("chart-soc"), 140, [
    { points: actual("plan_soc_pct"), cls: "soc-plan past" },
    { points: planSoc().filter(([ts]) => ts >= nowMs()), cls: "soc-plan" },
    { points: actual("soc_pct"), cls: "soc-actual" },
  ], [0, 100], "%");
}

// ---------------------------------------------------------------- live data

// States can arrive many times a second (accelerated simulation): draw at most every RENDER_MS.
const RENDER_MS = 250;
let renderTimer = null;
function scheduleRender() {
  if (renderTimer === null) renderTimer = setTimeout(() => { renderTimer = null; render(); }, RENDER_MS);
}

function connect() {
  const events = new EventSource("/api/events");
  const conn = $("conn");
  events.onopen = () => { conn.className = "conn"; conn.dataset.i18n = "live"; conn.textContent = t("live"); };
  events.onerror = () => { conn.className = "conn off"; conn.dataset.i18n = "offline"; conn.textContent = t("offline"); };
  events.addEventListener("snapshot", (e) => loadSnapshot(JSON.parse(e.data)));
  events.addEventListener("state", (e) => {
    ui.state = JSON.parse(e.data);
    recordHistory(ui.state);
    scheduleRender();
  });
  events.addEventListener("plan", (e) => { ui.plan = JSON.parse(e.data); scheduleRender(); });
  events.addEventListener("alarm", (e) => {
    ui.alarmLog.push(JSON.parse(e.data));
    ui.alarmLog = ui.alarmLog.slice(-20);
    scheduleRender();
  });
  events.addEventListener("audit", (e) => {
    ui.commandLog.push(JSON.parse(e.data));
    ui.commandLog = ui.commandLog.slice(-20);
    scheduleRender();
  });
}

// ---------------------------------------------------------------- control (bearer token)

function setupControl() {
  if (!ui.cfg.control) return;
  $("control").hidden = false;
  const token = $("token");
  token.value = sessionStorage.getItem("ems.token") || "";
  token.addEventListener("change", () => sessionStorage.setItem("ems.token", token.value));
  for (const form of document.querySelectorAll("#control form")) {
    form.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      const body = {};
      for (const [k, v] of new FormData(form)) {
        if (k === "ttl_min") body.ttl_s = Number(v) * 60;
        else body[k] = form.elements[k].type === "number" ? Number(v) : v;
      }
      const out = $("cmd-result");
      try {
        const resp = await fetch(`/api/cmd/${form.dataset.command}`, {
          method: "POST", headers: { "Content-Type": "application/json", Authorization: `Bearer ${token.value}` },
          body: JSON.stringify(body) });
        const result = await resp.json();
        out.className = result.accepted ? "ok" : "err";
        out.textContent = `${t(result.accepted ? "accepted" : "rejected")}: ${result.reason}`;
      } catch (err) {
        out.className = "err";
        out.textContent = String(err);
      }
    });
  }
}

async function main() {
  ui.cfg = await (await fetch("/api/config")).json();
  const stored = localStorage.getItem("ems.lang");
  await setLanguage(stored || ui.cfg.language || "auto");
  $("lang").addEventListener("change", (e) => {
    localStorage.setItem("ems.lang", e.target.value);
    setLanguage(e.target.value);
  });
  setupControl();
  setupNavigation();
  window.addEventListener("resize", scheduleRender);   // the charts are drawn at their width on screen
  connect();
  // the site's time: the latest state's clock (a simulation runs faster than the wall), else the wall clock
  const tick = () => { $("clock").textContent = `${t("site_time")} ${fmtTime(nowMs())}`; };
  tick();
  setInterval(tick, 1000);
}

main();
