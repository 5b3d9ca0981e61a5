"""``--timeout``: the durations it takes, the ones it refuses in one line naming the flag, and
the absolute deadline it makes (with the launchers' hidden ``--deadline``)."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from conftest import argv, hpsearch
from hpsearch.cli.main import build_parser
from hpsearch.cli.timeout import deadline_at, deadline_of, timeout_seconds
from hpsearch.results.timing import spent_and_left, until, utc_clock
from hpsearch.storage.deadlines import iso_utc


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("8h", 8 * 3600),
        ("90m", 90 * 60),
        ("3600s", 3600),
        ("2d", 2 * 86400),
        ("3600", 3600),  # a bare number is seconds
        ("2.5", 2.5),
        ("1h30m", 5400),
        ("1d2h3m4s", 86400 + 7200 + 180 + 4),
        ("1.5h", 5400),
        (" 1H 30M ", 5400),
        ("366d", 366 * 86400),
    ],
)
def test_durations(text: str, seconds: float) -> None:
    assert timeout_seconds(text) == pytest.approx(seconds)


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("0", "must be more than 0"),
        ("0s", "must be more than 0"),
        ("0h0m", "must be more than 0"),
        ("-5", "must be more than 0"),
        ("nan", "expected a duration"),
        ("inf", "expected a duration"),
        ("-inf", "expected a duration"),
        ("", "expected a duration"),
        ("abc", "expected a duration"),
        ("5x", "expected a duration"),
        ("h", "expected a duration"),
        ("8 hours", "expected a duration"),
        ("30m1h", "expected a duration"),  # largest unit first
        ("1h1h", "expected a duration"),
        ("1h-30m", "expected a duration"),
        ("367d", "at most 366 days"),
        ("1e9", "at most 366 days"),
        ("99999999999999999999h", "at most 366 days"),
    ],
)
def test_bad_durations(text: str, why: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match=why):
        timeout_seconds(text)


@pytest.mark.parametrize("command", ["run --trials 1", "worker", "confirm"])
@pytest.mark.parametrize("bad", ["--timeout 0", "--timeout abc", "--timeout nan", "--timeout=-5m"])
def test_a_bad_timeout_is_one_line_naming_it(
    capsys: pytest.CaptureFixture[str], command: str, bad: str
) -> None:
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(argv(f"{command} --study smoke {bad}"))
    err = capsys.readouterr().err
    assert e.value.code == 2
    assert err.count("\n") == 1 and "argument --timeout: " in err, err


def test_a_bad_timeout_from_the_real_command(tmp_path: Path) -> None:
    r = hpsearch(argv("run --study smoke --trials 2 --timeout 8x"), tmp_path)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.strip() == (
        "hpsearch run: error: argument --timeout: expected a duration (8h, 90m, 3600s, 2d, "
        "1h30m or a number of seconds), got '8x' (see hpsearch run --help)"
    )
    assert not (tmp_path / "hpsearch.db").exists()  # refused before anything is written


def test_the_deadline_is_now_plus_the_timeout_or_the_earlier_given() -> None:
    parse = build_parser().parse_args
    assert deadline_of(parse(argv("run --study smoke --trials 1"))) is None
    args = parse(argv("run --study smoke --trials 1 --timeout 90m"))
    assert deadline_of(args, now=1000.0) == 1000.0 + 5400
    later = iso_utc(1000.0 + 9999)
    args = parse(argv(f"worker --study smoke --timeout 90m --deadline {later}"))
    assert deadline_of(args, now=1000.0) == 1000.0 + 5400  # the earlier of the two
    args = parse(argv(f"confirm --study smoke --deadline {iso_utc(1234.0)}"))
    assert deadline_of(args, now=1000.0) == 1234.0


def test_the_hidden_deadline_is_an_iso_time_with_its_offset() -> None:
    assert deadline_at("1970-01-01T00:20:34+00:00") == 1234.0
    assert deadline_at("1970-01-01T01:20:34+01:00") == 1234.0
    for bad in ("1970-01-01T00:20:34", "tomorrow", ""):
        with pytest.raises(argparse.ArgumentTypeError, match="ISO 8601"):
            deadline_at(bad)
    assert "--deadline" not in build_parser().format_help()


def test_deadline_texts() -> None:
    noon = 1_767_268_800.0  # 2026-01-01 12:00:00 UTC
    assert utc_clock(noon + 90, noon) == "12:01:30 UTC"
    assert utc_clock(noon + 86400, noon) == "2026-01-02 12:00:00 UTC"  # not today: the date
    assert until(noon + 42, noon) == "in 42 s" and until(noon - 180, noon) == "passed 3.0 min ago"
    assert iso_utc(noon) == "2026-01-01T12:00:00+00:00"
    # the estimate of the time left never reaches past the deadline
    assert spent_and_left(10, 60, None, noon) == "10 s, ~60 s left"
    assert spent_and_left(10, 60, noon + 120, noon) == "10 s, ~60 s left, deadline in 2.0 min"
    assert spent_and_left(10, 600, noon + 120, noon) == (
        "10 s, deadline in 2.0 min (the rest needs ~10.0 min)"
    )
    assert spent_and_left(10, None, noon + 30, noon) == "10 s, deadline in 30 s"
    assert spent_and_left(10, 5, noon - 1, noon) == "10 s, deadline passed: no new trial starts"
