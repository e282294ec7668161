"""The simulated clouds' data plane: boots a Machine for each instance / VM their control
planes hold, and stops it when the instance is gone.

    hv = Hypervisor(topo, workdir, venv)
    hv.watch_ec2(lambda: boto3_ec2_client)          # moto's EC2 (cloudsim.moto_ec2)
    hv.watch_arm(arm_server)                        # the local ARM server (tests/providers)
    hv.start()
    ...
    hv.stop()                                       # every VM, even half-booted ones

It reads only the control planes' own answers: an EC2 instance that is ``running`` with a
public address and its ``userData`` attribute; an ARM VM whose provisioning ``Succeeded``,
its NIC's public IP and its ``customData``. Nothing of cloudmig is called.
"""

from __future__ import annotations

import base64
import gzip
import logging
import threading
from pathlib import Path
from typing import Callable

from cloudmig.providers.lab.topology import Topology
from cloudsim.machines import Machine
from cloudsim.moto_server import BARE_AMD64, HANGING_AMD64

# images of plain Debian 12, without cloudmig's CRIU or cloudmig (cloudsim.machines.BARE_IMAGE_HIDES)
BARE_IMAGES = {BARE_AMD64, "Debian:debian-12:12-gen2:0.20230101.1400"}
# images that hang at boot, before sshd and cloud-init
HANGING_IMAGES = {HANGING_AMD64, "Debian:debian-12:12-gen2:0.20221201.1300"}

log = logging.getLogger(__name__)

POLL_S = 0.2
PENDING = "pending"         # a source's answer for an instance that is not up yet (nor gone)


class Hypervisor:
    def __init__(self, topo: Topology, workdir: Path, venv: Path) -> None:
        self.topo, self.workdir, self.venv = topo, workdir, venv
        self.machines: dict[str, Machine] = {}          # instance id / VM id -> its machine
        self.failures: list[str] = []
        self._sources: list[Callable[[], dict[str, tuple[str, str, str] | str | None]]] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ what the clouds hold
    def watch_ec2(self, client: Callable[[], object]) -> None:
        """EC2 instances: id -> (public address, user-data) while running, None when gone."""
        def instances() -> dict[str, tuple[str, str, str] | str | None]:
            ec2 = client()
            out: dict[str, tuple[str, str, str] | str | None] = {}
            for r in ec2.describe_instances()["Reservations"]:
                for inst in r["Instances"]:
                    iid, state = inst["InstanceId"], inst["State"]["Name"]
                    if state != "running" or not inst.get("PublicIpAddress"):
                        out[iid] = PENDING if state == "pending" else None
                        continue
                    if iid in self.machines:
                        out[iid] = (self.machines[iid].address, "", "")
                        continue
                    attr = ec2.describe_instance_attribute(InstanceId=iid, Attribute="userData")
                    data = attr.get("UserData", {}).get("Value")
                    out[iid] = (inst["PublicIpAddress"], _user_data(base64.b64decode(data)) if data else "",
                                _image_kind(inst.get("ImageId", "")))
            return out
        self._sources.append(instances)

    def watch_arm(self, arm) -> None:
        """ARM VMs: id -> (its NIC's public IP, custom data) once Succeeded, None when gone."""
        def vms() -> dict[str, tuple[str, str, str] | str | None]:
            live = arm.live()
            out: dict[str, tuple[str, str, str] | str | None] = {}
            for rid, res in live.items():
                if res.get("type", "").lower() != "microsoft.compute/virtualmachines":
                    continue
                props = res["properties"]
                if props.get("provisioningState") != "Succeeded":
                    out[rid] = None if props.get("provisioningState") in ("Deleting", "Failed") else PENDING
                    continue
                address = _vm_address(live, props)
                custom = props.get("osProfile", {}).get("customData", "")
                ref = props.get("storageProfile", {}).get("imageReference", {})
                image = ":".join(str(ref.get(k, "")) for k in ("publisher", "offer", "sku", "version"))
                out[rid] = (address, _user_data(base64.b64decode(custom)) if custom else "",
                            _image_kind(image)) if address else PENDING
            return out
        self._sources.append(vms)

    # ------------------------------------------------------------------ loop
    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, daemon=True, name="cloudsim-hypervisor")
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(POLL_S):
            try:
                self.sync()
            except Exception as exc:            # a control plane restarting: try again
                log.debug("hypervisor poll: %s", exc)

    def sync(self) -> None:
        wanted: dict[str, tuple[str, str, str] | str | None] = {}
        for source in self._sources:
            wanted.update(source())
        with self._lock:
            for vid, machine in list(self.machines.items()):
                if wanted.get(vid) is None:
                    machine.stop()
                    del self.machines[vid]
            for vid, what in wanted.items():
                if not isinstance(what, tuple) or vid in self.machines:
                    continue
                address, user_data, kind = what
                machine = Machine(self.topo, self.workdir, address, user_data, vid, self.venv,
                                  bare=kind == "bare", hangs=kind == "hangs")
                try:
                    machine.boot()
                except Exception as exc:
                    self.failures.append(f"{vid} at {address}: {exc}")
                    log.error("could not boot %s: %s", vid, exc)
                    continue
                self.machines[vid] = machine

    def machine_at(self, address: str) -> Machine | None:
        with self._lock:
            return next((m for m in self.machines.values() if m.address == address), None)

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=10)
        with self._lock:
            for machine in self.machines.values():
                machine.stop()
            self.machines.clear()

    def leftovers(self) -> list[str]:
        return [f"{vid}: {item}" for vid, m in self.machines.items() for item in m.leftovers()]


def _user_data(raw: bytes) -> str:
    """As cloud-init reads user-data: gzip (its magic) is unpacked first."""
    return (gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw).decode()


def _image_kind(image: str) -> str:
    """'bare', 'hangs' or '' (the image built for cloudmig)."""
    return "bare" if image in BARE_IMAGES else "hangs" if image in HANGING_IMAGES else ""


def _vm_address(live: dict, vm_props: dict) -> str | None:
    for ref in vm_props.get("networkProfile", {}).get("networkInterfaces", []):
        nic = live.get(ref.get("id", "").lower())
        for cfg in (nic or {}).get("properties", {}).get("ipConfigurations", []):
            pip_id = cfg.get("properties", {}).get("publicIPAddress", {}).get("id", "").lower()
            pip = live.get(pip_id)
            if pip:
                return pip["properties"].get("ipAddress")
    return None
