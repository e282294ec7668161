"""Each provider as the contract suite meets it: how a valid host is asked for, what input it
must refuse, and what it declares where it truly differs from the others.

    case = ProviderCase(provider=LabProvider(), created_state="ready", transport="unix", ...)
    rec = case.provider.create_host(case.spec(1))
    assert rec.state == case.created_state
    case.footprint()            # what the provider has made, read from the machine / the cloud

A footprint is read from where things are made (namespaces, processes, files on the adopted
machine, the cloud's resources, the host's state directory), not from cloudmig's records, so
"destroy removed what create made" and "a refused input changed nothing" are checked against
the world, not against the inventory alone.

Also here: ``AdoptableMachine``, a machine for the ssh provider to adopt: one lab-style network
namespace with a public address on a bridge of its own (the lab's Topology, no lab agent and no
inventory entry: it is not a cloudmig host until adopted) and a real sshd in it
(cloudmig/bench/sshd.py).
"""

from __future__ import annotations

import dataclasses
import os
import signal
from pathlib import Path
from typing import Callable

from cloudmig.providers import HostSpec, Provider
from cloudmig.providers.lab import cleanup
from cloudmig.providers.lab.topology import Topology

from lab import Lab

from cloudmig.bench import sshd as sshlab

# options a capability promises: a provider declaring the capability documents the option
CAPABILITY_OPTIONS = {"tunnel-firewall": "wg_port", "elastic-ip": "elastic_ip", "wan-rate": "wan_rate",
                      "adopt": "target"}
# what every provider offers
COMMON_CAPABILITIES = frozenset({"create", "destroy"})


@dataclasses.dataclass
class ProviderCase:
    provider: Provider
    # declared: the provider offers at least these capabilities
    capabilities: frozenset[str]
    # state of a host create_host returned: "ready" when its agent answered (lab, adopted
    # machines), "running" when the VM is up and the agent is reached later (clouds)
    created_state: str
    transport: str                                   # how the agent is reached: unix | ssh
    # describe_host of a destroyed host: "gone", or "error" where the machine outlives the host
    # (an adopted machine stays; only its agent is gone)
    state_after_destroy: str
    spec: Callable[[int], HostSpec]                  # a valid spec for the i-th host of a test
    bad_specs: dict[str, HostSpec]                   # refused (ConfigError) before any change
    plan_mentions: Callable[[HostSpec], str]         # what plan_create names for that spec
    address: Callable[[HostSpec], str] | None        # the public address create must give, if known
    footprint: Callable[[], dict]

    @property
    def name(self) -> str:
        return self.provider.name


def host_dirs(state_dir: Path) -> list[str]:
    """Hosts with access material (token, keys, known_hosts) in the state directory."""
    d = state_dir / "hosts"
    return sorted(p.name for p in d.iterdir()) if d.exists() else []


def lab_footprint(machine: Lab) -> dict:
    """A lab's hosts on this machine. The lab's bridge is not counted: it is the lab's shared
    'internet', made with the first host and removed by `lab down`, not by destroying a host."""
    bridge = f"{machine.lab_id}-wan"
    return {"netns": machine.netns(), "links": [n for n in machine.links() if n != bridge],
            "cgroups": machine.cgroups(), "agents": machine.processes(),
            "host_dirs": host_dirs(machine.state_dir)}


def aws_footprint(ec2, state_dir: Path) -> dict:
    """What moto's EC2 holds of cloudmig's: live instances, security groups, key pairs, addresses."""
    managed = [{"Name": "tag:cloudmig:managed", "Values": ["true"]}]
    reservations = ec2.describe_instances(Filters=managed)["Reservations"]
    return {"instances": sorted(i["InstanceId"] for r in reservations for i in r["Instances"]
                                if i["State"]["Name"] != "terminated"),
            "groups": sorted(g["GroupName"] for g in ec2.describe_security_groups()["SecurityGroups"]
                             if g["GroupName"].startswith("cloudmig-")),
            "keys": sorted(k["KeyName"] for k in ec2.describe_key_pairs()["KeyPairs"]
                           if k["KeyName"].startswith("cloudmig-")),
            "addresses": sorted(a["AllocationId"] for a in ec2.describe_addresses(Filters=managed)["Addresses"]),
            "host_dirs": host_dirs(state_dir)}


def azure_footprint(arm, state_dir: Path) -> dict:
    """What the ARM server holds: every resource group and resource, by id."""
    return {"resources": sorted(arm.live()), "host_dirs": host_dirs(state_dir)}


class AdoptableMachine:
    """A namespace 'machine' with a real sshd, for the ssh provider to adopt; removed by stop()
    even when adoption or destroy failed half-way (its processes, files, namespaces, links)."""

    def __init__(self, workdir: Path, state_dir: Path, lab_id: str) -> None:
        self.topo = Topology(lab_id)
        self.index = 1
        self.netns = self.topo.host_netns("m1")
        self.address = self.topo.public_address(self.index)
        self.remote_root = workdir / "remote"           # the agents' directories on the machine
        self.world = Lab(state_dir, lab_id)             # what is on the machine (tests/lab.py)
        self.sshd: sshlab.Sshd | None = None
        self._workdir = workdir

    def start(self) -> None:
        self.topo.ensure_bridge()
        self.topo.add_host("m1", self.index, None)
        self.sshd = sshlab.Sshd(self._workdir / "sshd", netns=self.netns, address=self.address)
        self.sshd.start()

    def footprint(self) -> dict:
        files = sorted(str(p.relative_to(self.remote_root)) for p in self.remote_root.rglob("*")) \
            if self.remote_root.exists() else []
        prefix = f"{self.topo.lab}-c-"                  # the adopted agents' container namespaces
        return {"remote_files": files, "agents": self.world.processes(str(self.remote_root)),
                "container_netns": [n for n in self.world.netns() if n.startswith(prefix)],
                "cgroups": self.world.cgroups(), "host_dirs": host_dirs(self.world.state_dir)}

    def stop(self) -> None:
        if self.sshd:
            self.sshd.stop()
        for line in self.world.processes(str(self.remote_root)):   # an agent a failed destroy left
            try:
                os.kill(int(line.split(":")[0]), signal.SIGKILL)
            except ProcessLookupError:
                pass
        cleanup.sweep(self.topo)        # namespaces (and what runs in them), links, cgroups, host dirs
        self.topo.remove_bridge()

    def leftovers(self) -> dict:
        left = self.world.leftovers(str(self.remote_root))
        if self.sshd and self.sshd.processes():
            left["sshd"] = self.sshd.processes()
        return left
