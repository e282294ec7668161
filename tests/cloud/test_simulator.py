"""The cloud simulator boots what the real provider code asked the simulated control planes
for: an EC2 instance (moto) and an Azure VM (ARM server) each become a lab namespace at their
public address (198.18.0.0/15), running their own user-data: sshd with the host key the
controller made, first boot, the agent. The machine's own files are untouched."""

from __future__ import annotations

import ipaddress
import os
import subprocess
import time
from pathlib import Path

import pytest

from cloudmig.agent import dial
from cloudmig.inventory import Inventory
from cloudmig.providers import HostSpec
from cloudmig.providers.aws import AwsProvider
from cloudmig.providers.azure import AzureProvider

BOOT_TIMEOUT_S = 60
FIRST_BOOT_PATHS = ("/var/lib/cloudmig-agent", "/var/lib/cloudmig/bootstrap.status",
                    "/usr/local/sbin/cloudmig-firstboot", "/opt/cloudmig")


def _booted(sim, address):
    deadline = time.monotonic() + BOOT_TIMEOUT_S
    while time.monotonic() < deadline:
        machine = sim.hypervisor.machine_at(address)
        if machine and machine.wait_first_boot(1):
            return machine
        time.sleep(0.1)
    raise AssertionError(f"no VM booted at {address}: {sim.hypervisor.failures}")


def _other_key() -> str:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519
    return ed25519.Ed25519PrivateKey.generate().public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()


def _ssh(record, script):
    return subprocess.run(dial.ssh_argv(record, ["sh", "-c", script]), capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("cloud", ["aws", "azure"])
def test_an_instance_boots_its_user_data_at_its_public_address(cloud_sim, cloud):
    before = {p: os.path.exists(p) for p in FIRST_BOOT_PATHS}
    provider = AwsProvider() if cloud == "aws" else AzureProvider()     # azure: managed identity
    spec = HostSpec(name=f"sim-{cloud}", provider=cloud, operator_cidr="198.18.0.0/15")
    rec = provider.create_host(spec)
    assert ipaddress.ip_address(rec.public_address) in ipaddress.ip_network("198.18.0.0/15")
    machine = _booted(cloud_sim, rec.public_address)

    # the pinned host key (made by the controller, carried in the user-data) is sshd's
    pinned = Path(rec.agent["known_hosts"]).read_text().split()
    assert pinned[0] == rec.public_address and rec.agent["host_key_pinned"] == "1"
    res = _ssh(rec, "cat /var/lib/cloudmig/bootstrap.status; ls /var/lib/cloudmig-agent")
    assert res.returncode == 0, res.stderr
    assert res.stdout.split()[0] == "ok" and "agent.sock" in res.stdout.split()
    with dial.connect(Inventory().read().hosts[spec.name]) as agent:
        assert agent.call("ping")["host"]
    # what first boot wrote is the VM's, not the machine's
    assert {p: os.path.exists(p) for p in FIRST_BOOT_PATHS} == before

    # another key at that address is refused: no trust on first use
    Path(rec.agent["known_hosts"]).write_text(f"{rec.public_address} {_other_key()}\n")
    res = _ssh(rec, "true")
    assert res.returncode == 255 and "verification failed" in res.stderr.lower(), res.stderr

    provider.destroy_host(rec)
    deadline = time.monotonic() + BOOT_TIMEOUT_S
    while cloud_sim.hypervisor.machine_at(rec.public_address) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not cloud_sim.hypervisor.machine_at(rec.public_address)
    assert not machine.leftovers(), machine.leftovers()
