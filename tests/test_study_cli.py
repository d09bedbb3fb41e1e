"""``ems simulate`` / ``ems sweep --out``: the folder is checked before any work, an existing study is kept unless
``--force``, a user error is one line on stderr with exit code 2 (no traceback); short periods warn."""

from __future__ import annotations

from pathlib import Path

import pytest

from ems.cli import main

SCENARIOS = Path(__file__).resolve().parents[1] / "simulations" / "scenarios"
SCENARIO = str(SCENARIOS / "nam-cau-kien-qd963.yaml")
QUICK = ["--start", "2026-06-01", "--days", "1"]


def _simulate(out: Path, *extra: str) -> int:
    return main(["simulate", SCENARIO, "--out", str(out), "--strategies", "pv_only", *QUICK, *extra])


def _one_line_error(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --out "), err  # nothing ran: no progress bar
    assert "Traceback" not in err
    return lines[0]


def test_simulate_refuses_to_overwrite_a_study_without_force(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "study"
    out.mkdir()
    (out / "summary.json").write_text("{\"kept\": true}", encoding="utf-8")
    assert _simulate(out) == 2
    line = _one_line_error(capsys.readouterr().err)
    assert "already holds a study (summary.json)" in line and "--force" in line
    assert (out / "summary.json").read_text(encoding="utf-8") == "{\"kept\": true}"
    assert _simulate(out, "--force", "--no-progress") == 0
    assert "kept" not in (out / "summary.json").read_text(encoding="utf-8")
    assert (out / "report.html").is_file()


def test_simulate_into_an_empty_or_new_folder_runs(tmp_path: Path) -> None:
    assert _simulate(tmp_path, "--no-progress") == 0  # tmp_path exists and is empty
    assert _simulate(tmp_path / "a" / "b", "--no-progress") == 0  # created with its parents


def test_out_that_is_a_file_or_not_writable_is_refused_before_running(tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x", encoding="utf-8")
    assert _simulate(blocker) == 2
    assert "is a file, not a folder" in _one_line_error(capsys.readouterr().err)
    assert _simulate(blocker / "out") == 2  # its parent is a file: the folder cannot be created
    assert "is not writable" in _one_line_error(capsys.readouterr().err)
    assert main(["sweep", SCENARIO, "--pv", "1000", "--battery", "0", "--out", str(blocker), *QUICK]) == 2
    assert "is a file, not a folder" in _one_line_error(capsys.readouterr().err)


def test_sweep_refuses_to_overwrite_and_warns_about_a_short_period(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    args = ["sweep", SCENARIO, "--pv", "1000", "--battery", "0,1000", "--out", str(tmp_path), *QUICK]
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "warning: The simulated period is 1.0 days, shorter than a year" in err
    html = (tmp_path / "sweep.html").read_text(encoding="utf-8")
    assert 'id="period-warning"' in html and "shorter than a year" in html
    assert "None" not in html and ">nan<" not in html
    assert (tmp_path / "battery-npv.svg").is_file() and (tmp_path / "battery-payback.png").is_file()
    assert main(args) == 2
    line = _one_line_error(capsys.readouterr().err)
    assert "already holds a study (sweep.csv, sweep.html)" in line
    assert main([*args, "--force"]) == 0


def test_the_command_s_table_labels_the_bounds(tmp_path: Path, capsys) -> None:
    """The table ``ems simulate`` prints names the strategies as the report does: a bound says so."""
    assert main(["simulate", SCENARIO, "--out", str(tmp_path / "s"), "--strategies", "pv_only,perfect_foresight",
                 *QUICK, "--no-progress"]) == 0
    rows = capsys.readouterr().out.splitlines()
    assert any(r.startswith("perfect foresight (upper bound) ") for r in rows)
    assert any(r.startswith("PV only ") for r in rows) and not any(r.startswith("perfect_foresight") for r in rows)
    # one summer day of savings: the PV pays back, a battery run by perfect foresight does not within the life,
    # which reads "> 20"; the PV-only row has no battery, which reads "—" (one dash had stood for both)
    pv_only = next(r for r in rows if r.startswith("PV only "))
    bound = next(r for r in rows if r.startswith("perfect foresight (upper bound) "))
    assert pv_only.endswith(" —") and "> 20" not in pv_only
    assert bound.endswith("> 20"), bound
    assert any("> 20 = not within the 20-year study life, — = does not apply" in r for r in rows)
