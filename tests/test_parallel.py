"""Independent agent calls made at once (the preflight's and the prepare's): every call runs,
each result lands in its place, and the error is the one a sequential run would raise first."""

import threading

import pytest

from cloudmig import errors
from cloudmig.migration import parallel


def test_calls_overlap_and_results_keep_their_order():
    meet = threading.Barrier(3, timeout=30)       # passes only if all three run at the same time

    def call(value):
        def run():
            meet.wait()
            return value
        return run

    assert parallel.at_once(call("doctor"), call("cpuinfo"), call("memory")) == ["doctor", "cpuinfo", "memory"]
    assert parallel.at_once() == []


def test_every_call_ends_and_the_first_failure_in_order_is_raised():
    ended = []

    def fails(text):
        def run():
            ended.append(text)
            raise errors.PreflightError(text)
        return run

    def fine():
        ended.append("fine")
        return 1

    with pytest.raises(errors.PreflightError, match="source"):
        parallel.at_once(fine, fails("source"), fails("destination"))
    assert sorted(ended) == ["destination", "fine", "source"]
