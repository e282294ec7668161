"""Both simulated clouds and their data plane, for tests and examples.

    sim = CloudSimulator.start(workdir, lab_id="t1ab", venv=Path(sys.executable).parent.parent)
    env = sim.env          # for the cloudmig CLI: boto3's chain at the simulated EC2, azure's at the ARM server
    ... cloudmig host create --provider aws web1 ...   # boots a VM at a 198.18.X.Y address
    sim.stop()             # VMs, servers, the lab bridge

Addresses: the lab subnet of ``lab_id`` (198.18.X.0/24); EC2 hands out .129-.190, ARM .193-.254.
Azure credentials: DefaultAzureCredential's managed-identity path (IDENTITY_ENDPOINT) at the ARM
server, which answers with the token it accepts.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from cloudmig.providers.lab import cleanup
from cloudmig.providers.lab.topology import Topology
from cloudsim.arm_server import ARM_SUBSCRIPTION, ARM_TOKEN, ArmServer
from cloudsim.hypervisor import Hypervisor
from cloudsim.moto_server import MotoServer


@dataclasses.dataclass
class CloudSimulator:
    topo: Topology
    ec2: MotoServer
    arm: ArmServer
    hypervisor: Hypervisor

    @classmethod
    def start(cls, workdir: Path, lab_id: str, venv: Path) -> "CloudSimulator":
        topo = Topology(lab_id)
        topo.ensure_bridge()
        net = f"198.18.{topo.subnet_octet}"
        ec2 = arm = hv = None
        try:
            (workdir / "ec2").mkdir(parents=True, exist_ok=True)
            (workdir / "arm").mkdir(parents=True, exist_ok=True)
            ec2 = MotoServer.start(workdir / "ec2", addresses=f"{net}.128/26")
            arm = ArmServer.start(workdir / "arm", token=ARM_TOKEN, subscription=ARM_SUBSCRIPTION,
                                  addresses=f"{net}.192/26")
            hv = Hypervisor(topo, workdir / "vms", venv)
            hv.watch_ec2(ec2.ec2)
            hv.watch_arm(arm)
            hv.start()
        except BaseException:
            for part in (hv, ec2, arm):
                if part:
                    part.stop()
            topo.remove_bridge()
            raise
        return cls(topo=topo, ec2=ec2, arm=arm, hypervisor=hv)

    @property
    def env(self) -> dict[str, str]:
        return {**self.ec2.env, "AZURE_SUBSCRIPTION_ID": ARM_SUBSCRIPTION,
                "CLOUDMIG_AZURE_ARM_ENDPOINT": self.arm.url, "REQUESTS_CA_BUNDLE": str(self.arm.ca_path),
                **self.arm.identity_env}

    def stop(self) -> None:
        try:
            self.hypervisor.stop()
        finally:
            self.ec2.stop()
            self.arm.stop()
            for ns in self.topo.leftover_netns():      # a VM whose boot failed half-way
                cleanup.remove_netns(ns)
            self.topo.remove_bridge()

    def leftovers(self) -> list[str]:
        return self.hypervisor.leftovers() + [f"netns {n}" for n in self.topo.leftover_netns()]
