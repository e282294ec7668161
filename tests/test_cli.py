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


def test_agent_connect_relays_to_the_socket_without_loading_the_commands(tmp_path):
    """What every SSH session to an agent runs: bytes both ways to the daemon's socket, the
    agent sees the end of the input; no agent there is an Error, not a traceback."""
    import socket
    import threading

    path = str(tmp_path / "agent.sock")
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen(1)
    got = []

    def echo_upper() -> None:
        conn, _ = srv.accept()
        with conn:
            data = b""
            while chunk := conn.recv(4096):     # until the relay passes on the input's end
                data += chunk
            got.append(data)
            conn.sendall(data.upper())

    t = threading.Thread(target=echo_upper, daemon=True)
    t.start()
    res = cloudmig("agent", "connect", "--socket", path, input="ping\n" * 1000)
    t.join(10)
    srv.close()
    assert got == [b"ping\n" * 1000] and res.stdout == "PING\n" * 1000
    res = cloudmig("agent", "connect", "--socket", str(tmp_path / "none.sock"), check=False)
    assert res.returncode == 8 and res.stderr.startswith("Error: No agent answers on"), res.stderr
    assert "Traceback" not in res.stderr


def test_a_command_loads_its_own_module_and_help_still_lists_them_all():
    """`cloudmig <command>` loads only the module that registers it (the lab's agents and
    every scripted call start faster); the map names every command the modules register."""
    import subprocess
    import sys

    import typer.main

    from cloudmig.cli import COMMAND_MODULES, app
    assert sorted(typer.main.get_command(app).commands) == sorted(COMMAND_MODULES)
    probe = ("import sys; from cloudmig.cli import _load_app; _load_app(sys.argv[1:]); "
             "print(sorted(m for m in sys.modules if m.startswith('cloudmig.cli.') and m != 'cloudmig.cli._app'))")
    loaded = subprocess.run([sys.executable, "-c", probe, "--debug", "lab", "up"], capture_output=True,
                            text=True, check=True).stdout.strip()
    assert loaded == "['cloudmig.cli.lab']"
    res = cloudmig("--help")
    for command in COMMAND_MODULES:
        assert command in res.stdout, command
