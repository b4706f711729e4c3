"""Helpers shared by the grading tests."""
from __future__ import annotations

import pytest

from course_lib.checks import CheckFailure


def assert_check_fails(check, fn, words, **kwargs) -> None:
    """``check(fn, **kwargs)`` must raise CheckFailure whose message contains every word."""
    with pytest.raises(CheckFailure) as info:
        check(fn, **kwargs)
    for word in words:
        assert word in str(info.value), str(info.value)


def assert_stub_not_attempted(check) -> None:
    """A stub that raises NotImplementedError is reported as "not attempted"."""
    def stub(*args):
        raise NotImplementedError
    with pytest.raises(CheckFailure, match="not attempted"):
        check(stub)
