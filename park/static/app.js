// pv-battery-ems park summary: no framework, no CDN. Data: /api/config, /api/summary (polled).
// Numbers and times use Intl with the page language's locale and the park's IANA time zone.
// Words: the park's dictionary (/static/i18n), then the site dashboard's (mode names, alarm sentences).
"use strict";

const LANGS = ["vi", "en", "ja"];
const dict = {};
const ui = { cfg: null, lang: "en", locale: "en-GB", summary: null, error: null };
const $ = (id) => document.getElementById(id);

function pickLanguage(pref) {
  if (pref && pref !== "auto") return pref;
  for (const tag of navigator.languages || [navigator.language || "en"]) {
    const base = tag.slice(0, 2).toLowerCase();
    if (LANGS.includes(base)) return base;
  }
  return "en";
}

async function loadDict(lang) {
  if (dict[lang]) return;
  const [own, site] = await Promise.all([`/static/i18n/${lang}.json`, `/site-i18n/${lang}.json`]
    .map(async (url) => (await fetch(url)).json()));
  dict[lang] = { ...site, ...own };
}

function t(key, fallback) {
  return (dict[ui.lang] || {})[key] ?? (dict.en || {})[key] ?? fallback ?? key;
}

function fill(text, vars) {
  return text.replace(/\{(\w+)\}/g, (m, k) => (vars[k] !== undefined && vars[k] !== "" ? vars[k] : m));
}

async function setLanguage(pref) {
  const lang = pickLanguage(pref);
  await Promise.all([loadDict("en"), loadDict(lang)]);
  ui.lang = lang;
  ui.locale = t("_locale", "en-GB");
  document.documentElement.lang = lang;
  for (const el of document.querySelectorAll("[data-i18n]")) el.textContent = t(el.dataset.i18n, el.textContent);
  $("lang").value = pref || "auto";
  render();
}

function num(value, digits = 1) {
  if (value === null || value === undefined || Number.isNaN(value)) return "–";
  if (Number(value.toFixed(digits)) === 0) value = 0;          // never "-0,0"
  return new Intl.NumberFormat(ui.locale, { minimumFractionDigits: digits, maximumFractionDigits: digits }).format(value);
}

const kw = (v) => (v === null || v === undefined ? "–" : `${num(v)} kW`);
const pct = (v) => (v === null || v === undefined ? "–" : `${num(v, 0)} %`);
const kwh = (v) => (v === null || v === undefined ? "–" : `${num(v, 0)} kWh`);

// The energy behind a SOC: stored of what the battery holds at full SOC, and its state of health when reported.
function storedText(stored, capacity, soh) {
  const text = fill(t("stored_of"), { stored: num(stored, 0), capacity: kwh(capacity) });
  return soh === null || soh === undefined ? text : `${text} · ${fill(t("soh"), { soh: num(soh, 0) })}`;
}

// A saving is green, a loss red (a battery charged for a coming peak costs money first), none or unknown plain
function moneyClass(value) {
  if (value === null || value === undefined || Number.isNaN(value)) return "";
  return value > 0.5 ? " money" : value < -0.5 ? " money negative" : "";
}

function money(value) {
  if (value === null || value === undefined) return "–";
  try {
    return new Intl.NumberFormat(ui.locale, { style: "currency", currency: ui.cfg.currency, maximumFractionDigits: 0 })
      .format(value);
  } catch (err) {
    return `${num(value, 0)} ${ui.cfg.currency}`;
  }
}

function co2(kg) {
  if (kg === null || kg === undefined) return "–";
  return Math.abs(kg) >= 1000 ? `${num(kg / 1000, 2)} t CO₂` : `${num(kg, 0)} kg CO₂`;
}

function fmtTime(iso, withDate = false) {
  if (!iso) return "–";
  const opts = { timeZone: ui.cfg.timezone, hour: "2-digit", minute: "2-digit", second: "2-digit", hour12: false };
  if (withDate) Object.assign(opts, { year: "numeric", month: "2-digit", day: "2-digit" });
  return new Intl.DateTimeFormat(ui.locale, opts).format(new Date(iso));
}

function windowStart(iso) {   // a demand window's start, e.g. "Mon 04 May, 08:30" in park time
  return new Intl.DateTimeFormat(ui.locale, { timeZone: ui.cfg.timezone, weekday: "short", day: "2-digit",
    month: "short", hour: "2-digit", minute: "2-digit", hour12: false }).format(new Date(iso));
}

function alarmText(code) {
  const [prefix, device = "", point = ""] = String(code).split(":");
  const known = dict[ui.lang]?.[`alarm.${prefix}`] !== undefined || dict.en?.[`alarm.${prefix}`] !== undefined;
  return fill(t(`alarm.${known ? prefix : "unknown"}`), { device, point });
}

function cell(row, text, cls) {
  const td = document.createElement("td");
  if (cls) td.className = cls;
  if (text instanceof Node) td.append(text); else td.textContent = text;
  row.append(td);
  return td;
}

function peakCell(site) {
  const box = document.createElement("div");
  const cap = site.import_cap_kw;
  const line = document.createElement("div");
  line.textContent = cap ? `${kw(site.month_peak_kw)} / ${kw(cap)} (${pct(site.peak_of_cap_pct)})` : kw(site.month_peak_kw);
  line.title = cap ? "" : t("no_cap");
  box.append(line);
  if (cap && site.month_peak_kw !== null) {
    const bar = document.createElement("div");
    bar.className = site.peak_of_cap_pct > 100 ? "bar over" : "bar";
    const fillEl = document.createElement("span");
    fillEl.style.width = `${Math.min(100, site.peak_of_cap_pct)}%`;
    bar.append(fillEl);
    box.append(bar);
  }
  const notes = [];
  if (site.month_peak_at) notes.push(fill(t("peak_set_at"), { time: windowStart(site.month_peak_at) }));   // park time
  if (site.park_peak_share_kw !== null && site.park_peak_share_kw !== undefined) {
    notes.push(fill(t("park_peak_share"), { kw: kw(site.park_peak_share_kw) }));
  }
  for (const text of notes) {
    const line = document.createElement("div");
    line.className = "set";
    line.textContent = text;
    box.append(line);
  }
  return box;
}

function render() {
  if (!ui.cfg || !Object.keys(dict).length) return;
  const conn = $("conn");
  conn.className = ui.error ? "conn off" : ui.summary ? "conn" : "conn off";
  conn.textContent = t(ui.error ? "db_unreachable" : ui.summary ? "live" : "connecting");
  $("error").hidden = !ui.error;
  // the figures shown are the last answer's, if there was one: said with its time, never implied
  $("error").textContent = !ui.error ? ""
    : ui.summary ? `${fill(t("db_unreachable_long"), { time: fmtTime(ui.summary.generated_at, true) })} (${ui.error})`
    : `${t("db_unreachable_never")} (${ui.error})`;
  const s = ui.summary;
  if (!s) return;
  const tot = s.totals;
  $("t-reporting").textContent = `${tot.reporting} / ${tot.sites}`;
  for (const key of ["grid_kw", "pv_kw", "battery_kw", "load_kw"]) $(`t-${key}`).textContent = kw(tot[key]);
  $("t-saved_today").textContent = money(tot.saved_today);
  $("t-saved_today").className = `value${moneyClass(tot.saved_today)}`;
  $("t-saved_month").textContent = money(tot.saved_month);
  $("t-saved_month").className = `value${moneyClass(tot.saved_month)}`;
  $("t-demand_saved_month").textContent = tot.demand_saved_month ? fill(t("of_it_demand"), { amount: money(tot.demand_saved_month) }) : "";
  $("t-co2_avoided_kg_today").textContent = co2(tot.co2_avoided_kg_today);
  $("t-stored_kwh").textContent = tot.storage_sites ? storedText(tot.stored_kwh, tot.capacity_kwh) : "–";
  $("t-alarms_active").textContent = tot.alarms_active ?? "–";
  $("t-safe").textContent = tot.safe;
  $("t-over_cap").textContent = tot.over_cap;
  $("t-shedding").textContent = tot.shedding;
  const cp = s.coincident_peak;
  $("t-coincident_peak").textContent = cp ? kw(cp.peak_kw) : "–";
  $("coincident-hint").textContent = cp && cp.through
    ? fill(t("coincident_hint"), { minutes: cp.window_minutes, sum: kw(tot.month_peak_kw), time: fmtTime(cp.through, true),
      at: cp.peak_at ? windowStart(cp.peak_at) : "–" })
    : t("coincident_none");
  $("co2-hint").textContent = fill(t("co2_hint"), { factor: num(s.grid_factor_t_per_mwh, 3) })
    + " " + fill(t("generated"), { time: fmtTime(s.generated_at, true) });
  const body = $("sites").querySelector("tbody");
  body.replaceChildren();
  for (const site of s.sites) {
    const row = document.createElement("tr");
    row.dataset.site = site.site;
    cell(row, site.site, "site");
    if (!site.reporting) {
      row.className = "silent";
      const td = cell(row, t("not_reporting"), "mode");
      td.colSpan = 11;
      body.append(row);
      continue;
    }
    const badge = document.createElement("span");
    badge.className = `badge ${site.mode || ""}`;
    badge.textContent = site.mode ? t(`mode.${site.mode}`) : "–";
    cell(row, badge, "mode");
    cell(row, kw(site.grid_kw), "grid");
    cell(row, kw(site.pv_kw), "pv");
    cell(row, kw(site.battery_kw), "battery");
    const soc = cell(row, pct(site.soc_pct), "soc");
    if (site.stored_kwh !== null && site.stored_kwh !== undefined) {
      const part = document.createElement("div");
      part.className = "set";
      part.textContent = storedText(site.stored_kwh, site.capacity_kwh, site.soh_pct);
      soc.append(part);
    }
    cell(row, money(site.saved_today), `saved${moneyClass(site.saved_today)}`);
    const month = cell(row, money(site.saved_month), `saved-month${moneyClass(site.saved_month)}`);
    if (site.demand_saved_month) {   // under a demand charge: most of the month's value
      const part = document.createElement("div");
      part.className = "set";
      part.textContent = fill(t("of_it_demand"), { amount: money(site.demand_saved_month) });
      month.append(part);
    }
    cell(row, co2(site.co2_avoided_kg_today), "co2");
    cell(row, peakCell(site), "peak");
    const list = document.createElement("ul");
    for (const code of site.alarms) {
      const li = document.createElement("li");
      li.dataset.code = code;
      li.textContent = alarmText(code);
      li.title = code;
      list.append(li);
    }
    cell(row, site.alarms.length ? list : (site.alarms_active ? String(site.alarms_active) : t("no_alarms")), "alarms");
    cell(row, fmtTime(site.updated), "updated");
    body.append(row);
  }
}

async function refresh() {
  try {
    const resp = await fetch("/api/summary");
    const body = await resp.json();
    if (resp.ok) { ui.summary = body; ui.error = null; } else { ui.error = body.error || `HTTP ${resp.status}`; }
  } catch (err) {
    ui.error = String(err);
  }
  render();
}

async function main() {
  ui.cfg = await (await fetch("/api/config")).json();
  $("park").textContent = ui.cfg.park;
  document.title = `${ui.cfg.park} · pv-battery-ems`;
  await setLanguage(localStorage.getItem("ems.park.lang") || ui.cfg.language || "auto");
  $("lang").addEventListener("change", (e) => {
    localStorage.setItem("ems.park.lang", e.target.value);
    setLanguage(e.target.value);
  });
  const tick = () => { $("clock").textContent = fmtTime(new Date().toISOString()); };
  tick();
  setInterval(tick, 1000);
  await refresh();
  setInterval(refresh, ui.cfg.refresh_s * 1000);
}

main();
