"""The CLI's shape: help reads well, errors print `Error: ...` without a traceback."""

from __future__ import annotations

from lab import cloudmig


def test_help_lists_the_commands():
    res = cloudmig("--help")
    for command in ("doctor",):
        assert command in res.stdout


def test_unknown_command_is_a_usage_error():
    res = cloudmig("no-such-command", check=False)
    assert res.returncode == 2
    assert "Traceback" not in res.stderr
