"""Reach a host's agent, whatever the transport.

    with agents.connect(inv.host("h1")) as agent:
        agent.call("ping")
"""

from __future__ import annotations

import shlex

from cloudmig import errors
from cloudmig.agent.client import AgentClient, CommandTransport, UnixTransport
from cloudmig.inventory import HostRecord


def read_token(record: HostRecord) -> str:
    path = record.agent.get("token_file")
    if not path:
        raise errors.ConfigError(f"Host {record.name} has no agent token file on record.")
    try:
        with open(path) as fh:
            return fh.read().strip()
    except OSError as exc:
        raise errors.AgentError(f"Cannot read the token of host {record.name} ({path}): {exc.strerror}.",
                                hint="Recreate the host, or check the state directory.") from exc


def connect(record: HostRecord) -> AgentClient:
    token = read_token(record)
    if record.transport == "unix":
        return AgentClient(UnixTransport(record.agent["socket"]), token, host=record.name)
    if record.transport == "ssh":
        remote = record.agent.get("command", "cloudmig agent stdio")
        argv = ["ssh", "-o", "BatchMode=yes", *shlex.split(record.agent.get("ssh_options", "")),
                record.agent["target"], remote]
        return AgentClient(CommandTransport(argv), token, host=record.name)
    raise errors.ConfigError(f"Host {record.name} has unknown agent transport {record.transport!r}.")
