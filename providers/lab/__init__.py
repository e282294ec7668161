"""The lab provider: hosts as network namespaces on this machine (the embedded default).

    lab = LabProvider()
    lab.up(hosts=3, rate_bps=None, progress=print)     # h1..h3, idempotent
    lab.down(progress=print)                           # removes everything the lab made

Each host is a network namespace with a public address on the lab bridge, and runs its own
agent (``cloudmig agent serve`` under ``nsenter --net``) on a root-only unix socket.
"""

from __future__ import annotations

import logging
import secrets
import subprocess
import sys
import time
from pathlib import Path

from cloudmig import errors, paths
from cloudmig.agent.server import probe_unix
from cloudmig.inventory import HostRecord, Inventory
from cloudmig.network import addressing
from cloudmig.providers import HostSpec, Progress, _no_progress
from cloudmig.providers.lab import cleanup
from cloudmig.providers.lab.topology import HOST_NAME_RE, Topology

log = logging.getLogger(__name__)

AGENT_START_TIMEOUT_S = 15
AGENT_STOP_TIMEOUT_S = 5
MAX_LAB_HOSTS = 50


def agent_dir(host: str) -> Path:
    """Where the agent of lab host ``host`` works (its ``--host-dir``: bundles, migrations,
    mounts). Lab hosts live on this machine, so this is also the directory the controller
    keeps the host's token, socket and log in: ``paths.host_state_dir(host)``."""
    return paths.host_state_dir(host)


class LabProvider:
    name = "lab"
    capabilities = frozenset({"create", "destroy", "wan-rate"})
    option_help = {"wan_rate": "shape the host's WAN link, e.g. 200mbit (tc tbf)",
                   "index": "host number (hN gets 198.18.X.(10+N))"}

    def __init__(self, inventory: Inventory | None = None) -> None:
        self.inv = inventory or Inventory()
        self.topo = Topology.current()

    # ------------------------------------------------------------------ lab verbs
    def up(self, hosts: int = 2, rate_bps: int | None = None, progress: Progress = _no_progress) -> list[HostRecord]:
        if not 1 <= hosts <= MAX_LAB_HOSTS:
            raise errors.ConfigError(f"--hosts must be between 1 and {MAX_LAB_HOSTS}.")
        made_bridge = self.topo.ensure_bridge()
        if made_bridge:
            progress(f"bridge {self.topo.bridge} ({self.topo.bridge_address}/24): the lab's internet")
        records, created = [], []
        try:
            for i in range(1, hosts + 1):
                name = f"h{i}"
                existing = self.inv.read().hosts.get(name)
                if existing and existing.provider == "lab" and self._alive(existing):
                    progress(f"{name}: already up at {existing.public_address}")
                    records.append(existing)
                    continue
                spec = HostSpec(name=name, provider="lab", options={"index": str(i)})
                if rate_bps:
                    spec.options["wan_rate_bps"] = str(rate_bps)
                records.append(self.create_host(spec, progress))
                created.append(name)
        except BaseException:
            progress("lab up failed: removing what it made")
            for name in created:
                self.destroy_host(self.inv.read().hosts[name])
            if made_bridge and not self._lab_hosts():
                self.topo.remove_bridge()
            raise
        return records

    def down(self, progress: Progress = _no_progress) -> None:
        for record in self._lab_hosts():
            self.destroy_host(record, progress)
        cleanup.sweep(self.topo, progress)
        self.topo.remove_bridge()

    # ------------------------------------------------------------------ provider verbs
    def plan_create(self, spec: HostSpec) -> list[str]:
        idx = self._index(spec)
        return [f"network namespace {self.topo.host_netns(spec.name)}",
                f"veth {self.topo.host_veth(spec.name)} on bridge {self.topo.bridge}, "
                f"public address {self.topo.public_address(idx)}",
                f"agent on {paths.host_state_dir(spec.name) / 'agent.sock'}"]

    def create_host(self, spec: HostSpec, progress: Progress = _no_progress) -> HostRecord:
        idx = self._index(spec)
        name = spec.name
        with self.inv.transaction() as data:
            if name in data.hosts:
                raise errors.ConfigError(f"Host {name!r} already exists ({data.hosts[name].provider}).",
                                         hint=f"Destroy it first: cloudmig host destroy {name}")
            overlay = addressing.host_address(
                {h.overlay_address for h in data.hosts.values() if h.overlay_address})
            record = HostRecord(name=name, provider="lab", public_address=self.topo.public_address(idx),
                                state="pending", transport="unix", overlay_address=str(overlay),
                                created_at=time.time(), options=dict(spec.options))
            data.hosts[name] = record
        try:
            self.topo.ensure_bridge()
            if self.topo.host_exists(name):  # a leftover of a crashed run
                cleanup.remove_host(self.topo, name, agent_dir(name))
            rate = int(spec.options["wan_rate_bps"]) if spec.options.get("wan_rate_bps") else None
            self.topo.add_host(name, idx, rate)
            record.agent = self._start_agent(name)
            record.resources = {"netns": self.topo.host_netns(name), "veth": self.topo.host_veth(name)}
            record.state = "ready"
            with self.inv.transaction() as data:
                data.hosts[name] = record
        except BaseException:
            cleanup.remove_host(self.topo, name, agent_dir(name))
            with self.inv.transaction() as data:
                data.hosts.pop(name, None)
            raise
        progress(f"{name}: up at {record.public_address} (agent pid {record.agent.get('pid')})")
        return record

    def describe_host(self, record: HostRecord) -> HostRecord:
        copy = record.model_copy()
        copy.state = "ready" if self._alive(record) else ("gone" if not self.topo.host_exists(record.name) else "error")
        return copy

    def list_hosts(self) -> list[HostRecord]:
        return self._lab_hosts()

    def destroy_host(self, record: HostRecord, progress: Progress = _no_progress) -> None:
        cleanup.remove_host(self.topo, record.name, agent_dir(record.name))
        with self.inv.transaction() as data:
            data.hosts.pop(record.name, None)
            for cname in [c.name for c in data.containers.values() if c.host == record.name]:
                data.containers.pop(cname)
        progress(f"{record.name}: removed")

    def restart_agent(self, record: HostRecord) -> HostRecord:
        """Start a fresh agent for a lab host whose agent died (its work on disk is kept)."""
        pid = record.agent.get("pid")
        if pid:
            cleanup.kill_pids([int(pid)])
        agent = self._start_agent(record.name, new_token=False)
        with self.inv.transaction() as data:
            data.hosts[record.name].agent = agent
            return data.hosts[record.name]

    def allow_tunnel_peer(self, record: HostRecord, peer_address: str, port: int) -> None:
        """Lab hosts have no firewall in front of them: nothing to open."""

    def revoke_tunnel_peer(self, record: HostRecord, peer_address: str, port: int) -> None:
        """Nothing was opened."""

    # ------------------------------------------------------------------ helpers
    def _lab_hosts(self) -> list[HostRecord]:
        return [h for h in self.inv.read().hosts.values() if h.provider == "lab"]

    def _index(self, spec: HostSpec) -> int:
        if not HOST_NAME_RE.match(spec.name):
            raise errors.ConfigError(f"Lab host names are h1..h{MAX_LAB_HOSTS}; {spec.name!r} is not.")
        idx = int(spec.options.get("index", spec.name[1:]))
        if idx != int(spec.name[1:]):
            raise errors.ConfigError(f"Lab host {spec.name} must have index {spec.name[1:]}.")
        return idx

    def _alive(self, record: HostRecord) -> bool:
        sock = record.agent.get("socket")
        return bool(sock) and self.topo.host_exists(record.name) and probe_unix(sock)

    def _start_agent(self, name: str, new_token: bool = True) -> dict[str, str]:
        d = paths.ensure_private_dir(paths.host_state_dir(name))
        token_file, sock, log_file = d / "agent.token", d / "agent.sock", d / "agent.log"
        if new_token or not token_file.exists():
            paths.write_secret(token_file, secrets.token_urlsafe(32))
        argv = ["nsenter", f"--net=/run/netns/{self.topo.host_netns(name)}",
                sys.executable, "-m", "cloudmig", "agent", "serve", "--host", name,
                "--host-dir", str(agent_dir(name)), "--token-file", str(token_file), "--socket", str(sock),
                "--cgroup-parent", f"/cloudmig/{self.topo.lab}-{name}",
                "--netns-prefix", f"{self.topo.lab}-c-{name}"]
        with open(log_file, "ab") as logf:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=logf, stderr=logf,
                                    start_new_session=True, close_fds=True)
        (d / "agent.pid").write_text(str(proc.pid))
        deadline = time.monotonic() + AGENT_START_TIMEOUT_S
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                tail = log_file.read_text(errors="replace").strip().splitlines()[-3:]
                raise errors.ProviderError(f"The agent of {name} exited at start: {' / '.join(tail)}")
            if probe_unix(str(sock)):
                return {"socket": str(sock), "token_file": str(token_file), "pid": str(proc.pid)}
            time.sleep(0.05)
        proc.kill()
        raise errors.ProviderError(f"The agent of {name} did not answer within {AGENT_START_TIMEOUT_S} s.",
                                   hint=f"See {log_file}.")
