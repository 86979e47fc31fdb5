"""Hostile arguments to the read commands (`report ...`, `collector status`, `fleet devices|jobs`):
a one-line error and exit 1 or 2, never a traceback; a read command never writes the file it reads."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from collector.fleet.cli import fleet_group
from collector.reports.cli import report_group
from collector.service.cli import collector_group
from collector.store.sqlite import insert_results, open_db
from testkit.records import make_record


@pytest.fixture(scope="module")
def db(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("cli") / "edgebench.db"
    database = open_db(path)
    insert_results(database, [make_record("dev-1")])
    database.close()
    return path


def _fails_cleanly(group, args: list[str]) -> str:
    result = CliRunner().invoke(group, args)
    assert result.exit_code in (1, 2), (args, result.exit_code, result.output)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    lines = [line for line in result.output.strip().splitlines() if line.startswith("Error")]
    assert len(lines) == 1, result.output
    return lines[0]


@pytest.mark.parametrize(
    "args",
    [
        ["latency", "--since", "9999999d"],
        ["latency", "--since", "99999999999999999999w"],
        ["latency", "--until", "1e308d"],
        ["latency", "--since", "0001-01-01T00:00:00+14:00"],
        ["latency", "--since", "garbage"],
        ["latency", "--threads", "-1"],
        ["latency", "--threads", "many"],
        ["latency", "--batch", "-5"],
        ["latency", "--max-accuracy-drop", "-1"],
        ["latency", "--max-accuracy-drop", "nan"],
        ["latency", "--device", "nobody"],
        ["latency", "--format", "pdf"],
        ["ops", "--since", "9999999d"],
        ["ops", "--top", "x"],
        ["compare", "9999999d..", "1d.."],
        ["compare", "garbage", "other"],
    ],
)
def test_report_argument_errors_are_one_line(db, args):
    _fails_cleanly(report_group, [*args, "--db", str(db)])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(min_size=1, max_size=30).filter(lambda s: not s.startswith("-")))
def test_report_since_never_tracebacks(db, since):
    result = CliRunner().invoke(report_group, ["latency", "--db", str(db), "--since", since])
    assert result.exit_code in (0, 1, 2), result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)


READ_COMMANDS = [
    (report_group, ["latency"]),
    (report_group, ["ops"]),
    (report_group, ["compare", "1d..", "2d.."]),
    (collector_group, ["status"]),
    (fleet_group, ["devices"]),
    (fleet_group, ["jobs"]),
]


@pytest.mark.parametrize(("group", "args"), READ_COMMANDS)
@pytest.mark.parametrize("content", [None, b"", b"not a database at all\n"])
def test_read_commands_never_write_what_they_read(tmp_path, group, args, content):
    path = tmp_path / "some.db"
    if content is not None:
        path.write_bytes(content)
    line = _fails_cleanly(group, [*args, "--db", str(path)])
    assert str(path) in line or "database" in line
    if content is None:
        assert not path.exists()
    else:
        assert path.read_bytes() == content
    assert sorted(p.name for p in tmp_path.iterdir()) == ([] if content is None else ["some.db"])
