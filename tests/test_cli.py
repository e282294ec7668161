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


def _command_paths(group, prefix=()):
    for name, cmd in group.commands.items():
        yield (*prefix, name)
        if hasattr(cmd, "commands"):
            yield from _command_paths(cmd, (*prefix, name))


def test_every_commands_help_renders():
    """Help text is rich markup: a stray "[/udp]" once made `cloudmig run --help` crash."""
    import typer.main
    from typer.testing import CliRunner

    from cloudmig.cli import app
    paths = list(_command_paths(typer.main.get_command(app)))
    assert ("run",) in paths and ("lab", "up") in paths
    runner = CliRunner()
    for path in paths:
        res = runner.invoke(app, [*path, "--help"])
        assert res.exit_code == 0, (path, res.output, res.exception)
        assert "Usage" in res.output, path
