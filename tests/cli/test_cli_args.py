"""The command line's parsing, in this process: --help texts and the count flags' one check."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from hpsearch.cli.main import build_parser


def subcommands() -> list[str]:
    (sub,) = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return sorted(sub.choices)


def parse(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of parsing ``hpsearch ARGV``; 0 and no output if it parses."""
    try:
        build_parser().parse_args(list(argv))
        code = 0
    except SystemExit as e:
        code = int(e.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("command", ["", *subcommands()])
def test_help_names_only_defaults_that_say_something(
    capsys: pytest.CaptureFixture[str], command: str
) -> None:
    code, out, _ = parse(capsys, *([command] if command else []), "--help")
    assert code == 0 and "usage: hpsearch" in out
    flat = " ".join(out.split())
    for noise in ("(default: None)", "(default: False)", "(default: [])"):
        assert noise not in flat
    parser = build_parser()
    if command:
        (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        parser = sub.choices[command]
    for action in parser._actions:  # a help text that names its default gets no second one
        text = parser._get_formatter()._get_help_string(action) or ""
        assert text.replace("%(default)s", "").count("default") <= 1, text


def test_every_command_is_covered() -> None:
    assert {"run", "worker", "train", "confirm", "serve", "predict", "report"} <= set(subcommands())


RUN = ("run", "--study", "smoke", "--trials", "1")
CONFIRM = ("confirm", "--study", "smoke")


@pytest.mark.parametrize(
    ("argv", "flag"),
    [
        (("run", "--study", "smoke", "--trials"), "--trials"),
        ((*RUN, "--workers"), "--workers"),
        ((*RUN, "--trials-per-gpu"), "--trials-per-gpu"),
        ((*RUN, "--heartbeat"), "--heartbeat"),
        ((*CONFIRM, "--top"), "--top"),
        ((*CONFIRM, "--seeds"), "--seeds"),
        ((*CONFIRM, "--workers"), "--workers"),
        ((*CONFIRM, "--trials-per-gpu"), "--trials-per-gpu"),
        (("serve", "--study", "smoke", "--max-batch"), "--max-batch"),
    ],
)
def test_count_flags_take_whole_numbers_of_at_least_one(
    capsys: pytest.CaptureFixture[str], argv: tuple[str, ...], flag: str
) -> None:
    for bad, why in (("0", "must be at least 1, got 0"), ("-3", "must be at least 1, got -3")):
        code, _, err = parse(capsys, *argv, bad)
        assert code == 2 and err.count("\n") == 1 and f"argument {flag}: {why}" in err, err
    code, _, err = parse(capsys, *argv, "two")
    assert code == 2 and f"argument {flag}: expected a whole number, got 'two'" in err, err
    assert parse(capsys, *argv, "2")[0] == 0


def test_wait_takes_zero_but_not_a_negative_number(capsys: pytest.CaptureFixture[str]) -> None:
    worker = ("worker", "--study", "smoke", "--wait")
    assert build_parser().parse_args([*worker, "0"]).wait == 0
    code, _, err = parse(capsys, *worker, "-5")
    assert code == 2 and "argument --wait: must be at least 0, got -5" in err, err


def test_importing_hpsearch_leaves_the_warnings_filters_alone() -> None:
    """Optuna's experimental warnings are silenced by the program (cli.main), not by importing a
    module that a library user or a test imports."""
    code = (
        "import warnings, optuna\n"
        "import hpsearch.storage.study, hpsearch.search.objective, hpsearch.storage.checkpoint\n"
        "import hpsearch.cli.main\n"
        "print(any(f[2] is optuna.exceptions.ExperimentalWarning for f in warnings.filters))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
