"""Dial a host's agent, whatever the transport: one channel, kept for as long as it is used.

    with dial.connect(inv.read().host("h1")) as agent:
        agent.call("ping")

Transports: ``unix`` (the agent's root-only socket on this machine: lab hosts) and ``ssh``
(remote hosts). Over SSH the agent is not started per session — it is a daemon on the host
that keeps per-container state between calls — so the SSH session runs a relay,
``cloudmig agent connect --socket PATH``, that copies its stdin/stdout to that socket.
"""

from __future__ import annotations

import shlex

from cloudmig import __version__, errors, paths
from cloudmig.agent.client import AgentClient, CommandTransport, UnixTransport
from cloudmig.inventory import HostRecord

SSH_CONNECT_TIMEOUT_S = 10
SSH_KEEPALIVE_S = 15            # a silent peer is dropped after 3 missed keepalives


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


def known_hosts_file(record: HostRecord) -> str:
    """Where the host's SSH key is pinned (on first contact)."""
    return record.agent.get("known_hosts") or str(paths.host_state_dir(record.name) / "known_hosts")


def ssh_argv(record: HostRecord, remote: list[str]) -> list[str]:
    """``ssh ... TARGET REMOTE`` for a host: batch mode, its pinned host key, its identity."""
    agent = record.agent
    target = agent.get("ssh_target")
    if not target:
        raise errors.ConfigError(f"Host {record.name} has no SSH target on record.")
    # a cloud host's key is made by the controller and pinned before first contact: no other is
    # accepted; an adopted machine's is pinned on first contact
    strict = "yes" if agent.get("host_key_pinned") == "1" else "accept-new"
    argv = ["ssh", "-T", "-o", "BatchMode=yes", "-o", f"StrictHostKeyChecking={strict}",
            "-o", f"UserKnownHostsFile={known_hosts_file(record)}", "-o", "GlobalKnownHostsFile=/dev/null",
            "-o", f"ConnectTimeout={SSH_CONNECT_TIMEOUT_S}", "-o", f"ServerAliveInterval={SSH_KEEPALIVE_S}",
            "-o", "ServerAliveCountMax=3", "-o", "LogLevel=ERROR"]
    if agent.get("port"):
        argv += ["-p", agent["port"]]
    if agent.get("identity_file"):
        argv += ["-i", agent["identity_file"], "-o", "IdentitiesOnly=yes"]
    if agent.get("sudo") == "1":
        remote = ["sudo", "-n", *remote]
    return [*argv, "--", target, " ".join(shlex.quote(a) for a in remote)]


def relay_command(record: HostRecord) -> list[str]:
    """What runs on the host for one agent session: the relay to the agent daemon's socket."""
    cloudmig = record.agent.get("remote_cloudmig", "cloudmig")
    socket = record.agent.get("remote_socket")
    if not socket:
        raise errors.AgentError(f"Host {record.name} has no agent socket on record: it was never adopted.",
                                hint=f"Adopt it: cloudmig host add {record.name} --ssh USER@ADDRESS")
    return [cloudmig, "agent", "connect", "--socket", socket]


def connect(record: HostRecord) -> AgentClient:
    """A channel to the host's agent, once the agent said it runs this very cloudmig version."""
    client = _open(record)
    try:
        theirs = client.call("ping").get("version")
    except BaseException:
        client.close()
        raise
    if theirs != __version__:
        client.close()
        fix = (f"cloudmig host add {record.name} --ssh {record.agent.get('ssh_target', 'USER@ADDRESS')}"
               if record.transport == "ssh" else "restart its agent (`cloudmig lab up` for lab hosts)")
        raise errors.AgentError(f"Host {record.name} runs cloudmig {theirs}; this controller is {__version__}.",
                                hint=f"Install the same version there: {fix} (it ships this one).")
    return client


def _open(record: HostRecord) -> AgentClient:
    token = read_token(record)
    if record.transport == "unix":
        return AgentClient(UnixTransport(record.agent["socket"]), token, host=record.name)
    if record.transport == "ssh":
        argv = ssh_argv(record, relay_command(record))
        return AgentClient(CommandTransport(argv), token, host=record.name)
    raise errors.ConfigError(f"Host {record.name} has unknown agent transport {record.transport!r}.")
