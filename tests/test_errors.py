"""first_line: how another library's error is quoted inside one of hpsearch's one-line messages."""

from __future__ import annotations

from hpsearch.errors import MESSAGE_LIMIT, first_line


def test_first_non_blank_line_only() -> None:
    assert first_line(RuntimeError("\n  CUDA out of memory.  \nTried to allocate 2 GiB")) == (
        "CUDA out of memory."
    )


def test_an_empty_message_gives_the_type_name() -> None:
    assert first_line(ValueError()) == "ValueError"
    assert first_line("  \n") == ""


def test_a_long_line_is_cut_and_says_so() -> None:
    cut = first_line(OSError("x" * 1000))
    assert len(cut) == MESSAGE_LIMIT and cut.endswith("...")
    assert first_line("y" * 50, limit=20) == "y" * 17 + "..."
