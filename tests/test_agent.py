"""The agent channel: authentication, versions, typed remote errors."""

from __future__ import annotations

import json
import socket

import pytest

from cloudmig import errors
from cloudmig.agent import protocol
from cloudmig.agent.client import AgentClient, UnixTransport
from lab import Lab, lab_fixture


lab = lab_fixture(1)


def _raw(sock_path: str, message: dict) -> dict:
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(sock_path)
        f = s.makefile("rwb")
        f.write(json.dumps(message).encode() + b"\n")
        f.flush()
        return json.loads(f.readline())


def _agent(lab: Lab) -> tuple[str, str]:
    host = lab.inventory()["hosts"]["h1"]["agent"]
    return host["socket"], open(host["token_file"]).read().strip()


def test_ping_with_the_token(lab):
    sock, token = _agent(lab)
    with AgentClient(UnixTransport(sock), token, host="h1") as agent:
        assert agent.call("ping")["host"] == "h1"


def test_wrong_token_is_refused(lab):
    sock, _ = _agent(lab)
    with AgentClient(UnixTransport(sock), "not-the-token", host="h1") as agent:
        with pytest.raises(errors.AuthError):
            agent.call("ping")
    reply = _raw(sock, {"v": 1, "id": 7, "op": "ping", "args": {}})
    assert reply["ok"] is False and reply["error"]["type"] == "AuthError"


def test_unknown_version_is_refused(lab):
    sock, token = _agent(lab)
    reply = _raw(sock, {"v": 99, "id": 1, "token": token, "op": "ping", "args": {}})
    assert reply["ok"] is False and reply["error"]["type"] == "ProtocolError"
    assert "version" in reply["error"]["message"]


def test_remote_errors_keep_type_and_traceback(lab):
    sock, token = _agent(lab)
    with AgentClient(UnixTransport(sock), token, host="h1") as agent:
        with pytest.raises(errors.ConfigError) as info:
            agent.call("container.logs", name="nope")
        assert "Traceback" in info.value.remote_traceback
        with pytest.raises(errors.ProtocolError):
            agent.call("no.such.op")


def test_socket_and_token_are_root_only(lab):
    import os
    sock, _ = _agent(lab)
    host = lab.inventory()["hosts"]["h1"]["agent"]
    assert os.stat(sock).st_mode & 0o077 == 0
    assert os.stat(host["token_file"]).st_mode & 0o777 == 0o600


def test_wire_format_roundtrip():
    req = protocol.Request(id=3, op="ping", args={"a": 1}, token="t")
    back = protocol.decode_request(protocol.encode(req.to_wire()))
    assert back == req


def test_state_files_keep_every_concurrent_change(tmp_path):
    """The agent's record of the routes it sends into tunnels is changed by each migration
    leaving its host; a plan's wave runs several at once in the agent's threads. Every change
    lands, and none fails (a shared temporary file made one writer's rename fail)."""
    from concurrent.futures import ThreadPoolExecutor
    from cloudmig.agent.netops import _read_json, _set_in_json
    path = tmp_path / "tunnel-routes.json"

    def writer(k: int) -> None:
        for i in range(200):
            _set_in_json(path, f"100.96.0.{k}", f"cm{k}-{i}")

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(writer, range(4)))          # re-raises a writer's error
    assert _read_json(path) == {f"100.96.0.{k}": f"cm{k}-199" for k in range(4)}
    assert [p.name for p in tmp_path.iterdir()] == ["tunnel-routes.json"]
