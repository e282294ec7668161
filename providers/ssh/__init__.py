"""The ssh provider: adopt an existing machine reached over SSH.

    $ cloudmig host add s1 --ssh root@203.0.113.9 [--identity ~/.ssh/id_ed25519] [--port 22]

Adoption: pin the host key (``$CLOUDMIG_STATE_DIR/hosts/NAME/known_hosts``, accept-new),
install cloudmig there unless the same version is present, write the agent's token (0600 on
both sides), start the agent as a daemon on a root-only unix socket (systemd unit, or
setsid+nohup without systemd) and reach it through the SSH relay. Destroy stops the agent,
removes its containers and files, and forgets the host; nothing else on the machine is touched.
"""

from __future__ import annotations

import ipaddress
import re
import secrets
import shlex
import socket
from pathlib import Path

from cloudmig import errors, paths
from cloudmig.inventory import HostRecord, Inventory
from cloudmig.network import addressing
from cloudmig.providers import HostSpec, Progress, _no_progress, cloud_host
from cloudmig.providers.ssh import install
from cloudmig.providers.ssh.remote import DEFAULT_ROOT, DEFAULT_VENV, START_MODES, AgentLayout
from cloudmig.providers.ssh.session import Session

__all__ = ["SshProvider", "layout_of", "reach_agent"]

_TARGET_RE = re.compile(r"^(?:([a-z_][a-z0-9_.-]{0,31})@)?([A-Za-z0-9.:-]{1,253})$")

OPTION_HELP = {
    "target": "USER@ADDRESS to adopt (what --ssh gives)",
    "identity": "private key file for SSH (default: ssh's own choice)",
    "port": "sshd's port (default 22)",
    "remote_venv": f"where cloudmig is (or gets) installed on the host (default {DEFAULT_VENV})",
    "remote_dir": f"the agent's directory on the host: token, socket, log, containers (default {DEFAULT_ROOT})",
    "agent_start": "auto (systemd if it runs, else setsid+nohup), systemd or nohup",
    "cgroup_parent": "parent cgroup of the host's containers (default /cloudmig)",
    "netns_prefix": "prefix of the containers' network namespace names (default cm)",
}


def layout_of(record: HostRecord) -> AgentLayout:
    o = record.options
    return AgentLayout(host=record.name, root=o.get("remote_dir", DEFAULT_ROOT),
                       venv=o.get("remote_venv", DEFAULT_VENV), cgroup_parent=o.get("cgroup_parent", "/cloudmig"),
                       netns_prefix=o.get("netns_prefix", "cm"))


def _parse_target(target: str | None) -> tuple[str, str, str]:
    """(user, address as written, IPv4 address) of USER@ADDRESS."""
    m = _TARGET_RE.match(target or "")
    if not m:
        raise errors.ConfigError(f"--ssh {target!r} is not USER@ADDRESS.", hint="e.g. --ssh root@203.0.113.9")
    user, address = m.group(1) or "root", m.group(2)
    try:
        ip = str(ipaddress.IPv4Address(address))
    except ValueError:
        try:
            ip = socket.getaddrinfo(address, None, socket.AF_INET)[0][4][0]
        except OSError as exc:
            raise errors.ConfigError(f"Cannot resolve {address!r} to an IPv4 address ({exc}).",
                                     hint="Give the host's address, or fix its DNS name.") from None
    return user, address, ip


def reach_agent(inv: Inventory, record: HostRecord, progress: Progress) -> None:
    """The last step of adopting a host whose agent runs: its tunnel address, then ``ping`` and
    ``doctor`` through the SSH relay; the host is then ``ready`` (cloud hosts join this way too)."""
    name = record.name
    with inv.transaction() as data:
        if not record.overlay_address:
            record.overlay_address = str(addressing.host_address(
                {h.overlay_address for h in data.hosts.values() if h.overlay_address}))
        data.hosts[name] = record
    from cloudmig.agent import dial
    with dial.connect(record) as agent:
        pong = agent.call("ping")
        checks = agent.call("doctor")
    progress(f"{name}: agent answered over the SSH relay (cloudmig {pong.get('version')}, "
             f"protocol {pong.get('protocol')}, kernel {pong.get('kernel')})")
    failed = [c for c in checks if c.get("status") == "fail" and c.get("required", True)]
    for c in failed:
        progress(f"{name}: doctor: {c['name']} FAILS: {c.get('detail', '')} {c.get('hint', '')}".rstrip())
    progress(f"{name}: doctor: {len(checks) - len(failed)} of {len(checks)} checks pass")
    record.state = "ready"
    cloud_host.save(inv, record)


class SshProvider:
    name = "ssh"
    capabilities = frozenset({"create", "destroy", "adopt"})
    option_help = OPTION_HELP

    def __init__(self, inventory: Inventory | None = None) -> None:
        self.inv = inventory or Inventory()

    def _check(self, spec: HostSpec) -> tuple[dict[str, str], str, str, str]:
        opts = cloud_host.parse_options("ssh", spec.options, OPTION_HELP)
        cloud_host.check_name("ssh", spec.name)
        user, address, ip = _parse_target(opts.get("target"))
        if not opts.get("port", "22").isdigit() or not 1 <= int(opts.get("port", "22")) <= 65535:
            raise errors.ConfigError(f"--port {opts['port']!r} is not a TCP port number.")
        if opts.get("identity") and not Path(opts["identity"]).is_file():
            raise errors.ConfigError(f"--identity {opts['identity']}: no such file.")
        if opts.get("agent_start", "auto") not in START_MODES:
            raise errors.ConfigError(f"agent_start is one of {', '.join(START_MODES)}, not {opts['agent_start']!r}.")
        return opts, user, address, ip

    def plan_create(self, spec: HostSpec) -> list[str]:
        opts, user, address, ip = self._check(spec)
        layout = AgentLayout(host=spec.name, root=opts.get("remote_dir", DEFAULT_ROOT),
                             venv=opts.get("remote_venv", DEFAULT_VENV))
        return [f"SSH to {user}@{address} port {opts.get('port', '22')}; its host key pinned in "
                f"{paths.host_state_dir(spec.name) / 'known_hosts'}",
                f"cloudmig at {layout.venv} (shipped from this checkout and bootstrapped unless present)",
                f"agent daemon on {layout.socket} (token {layout.token_file}, 0600)"]

    def create_host(self, spec: HostSpec, progress: Progress = _no_progress) -> HostRecord:
        opts, user, address, ip = self._check(spec)
        record = cloud_host.reserve(self.inv, spec, opts)
        record.public_address = ip
        layout = layout_of(record)
        d = paths.ensure_private_dir(paths.host_state_dir(spec.name))
        record.agent = {"ssh_target": f"{user}@{address}", "port": opts.get("port", "22"),
                        "known_hosts": str(d / "known_hosts"), "token_file": str(d / "agent.token"),
                        "remote_token_file": layout.token_file, "remote_socket": layout.socket,
                        "remote_cloudmig": layout.cloudmig, "sudo": "0" if user == "root" else "1"}
        if opts.get("identity"):
            record.agent["identity_file"] = str(Path(opts["identity"]).resolve())
        try:
            with cloud_host.Rollback(progress) as undo:
                self._adopt(record, layout, opts.get("agent_start", "auto"), progress, undo)
        except BaseException:
            cloud_host.forget_host(self.inv, spec.name)
            raise
        return record

    def _adopt(self, record: HostRecord, layout: AgentLayout, mode: str, progress: Progress,
               undo: cloud_host.Rollback) -> None:
        name, sess = record.name, Session(record)
        progress(f"{name}: SSH to {record.agent['ssh_target']} port {record.agent['port']} "
                 f"(host key pinned in {record.agent['known_hosts']})")
        uname = sess.run("uname -sr", what="the first SSH contact").stdout.strip()
        progress(f"{name}: connected ({uname})")
        install.ensure(sess, layout, progress)
        token = secrets.token_urlsafe(32)
        paths.write_secret(Path(record.agent["token_file"]), token)
        q = shlex.quote(layout.root)
        sess.run(f"umask 077 && mkdir -p {q} && chmod 700 {q} && cat > {q}/agent.token && chmod 600 {q}/agent.token",
                 input=token.encode(), what="writing the agent token")
        undo.push(f"the agent's files on {name}", lambda: sess.run(layout.stop_script(purge=True),
                                                                    what="removing the agent"))
        started = sess.run(layout.start_script(mode), what="starting the agent").stdout.split()
        progress(f"{name}: agent started ({started[1] if len(started) > 1 else '?'}, pid "
                 f"{started[2] if len(started) > 2 else '?'}) on {layout.socket}")
        reach_agent(self.inv, record, progress)

    def describe_host(self, record: HostRecord) -> HostRecord:
        from cloudmig.agent import dial
        copy = record.model_copy()
        try:
            with dial.connect(record) as agent:
                agent.call("ping")
            copy.state = "ready"
        except errors.CloudmigError:
            copy.state = "error"
        return copy

    def list_hosts(self) -> list[HostRecord]:
        return [h for h in self.inv.read().hosts.values() if h.provider == "ssh"]

    def destroy_host(self, record: HostRecord, progress: Progress = _no_progress) -> None:
        if not record.agent.get("ssh_target"):
            progress(f"{record.name}: not in the inventory; an adopted machine cannot be swept without it")
            return
        from cloudmig.agent import dial
        try:
            with dial.connect(record) as agent:
                for c in agent.call("container.list"):
                    agent.call("container.remove", name=c["name"])
                    progress(f"{record.name}: container {c['name']} removed")
        except errors.CloudmigError as exc:
            progress(f"{record.name}: the agent did not answer ({exc}); removing its files anyway")
        Session(record).run(layout_of(record).stop_script(purge=True), what="stopping the agent")
        progress(f"{record.name}: agent stopped, {layout_of(record).root} removed")
        with self.inv.transaction() as data:
            for cname in [c.name for c in data.containers.values() if c.host == record.name]:
                data.containers.pop(cname)
        cloud_host.forget_host(self.inv, record.name)
        progress(f"{record.name}: forgotten (the machine itself was left as it was)")

    def allow_tunnel_peer(self, record: HostRecord, peer_address: str, port: int) -> None:
        """An adopted machine's firewall is its owner's: nothing is opened."""

    def revoke_tunnel_peer(self, record: HostRecord, peer_address: str, port: int) -> None:
        """Nothing was opened."""
