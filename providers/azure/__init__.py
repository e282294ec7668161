"""The azure provider: hosts as Azure VMs (azure-mgmt-*, imported only when a verb runs).

    from cloudmig.providers import HostSpec, load
    azure = load("azure")                       # DefaultAzureCredential, AZURE_SUBSCRIPTION_ID
    rec = azure.create_host(HostSpec(name="web2", provider="azure", operator_cidr="203.0.113.7/32",
                                     options={"location": "westeurope"}), print)
    azure.destroy_host(rec, print)

Each host gets a resource group cloudmig-NAME (unless --option resource_group names an
existing one), a virtual network and subnet, a network security group, a static public IP, a
NIC and the VM with cloud-init custom data. Names are derived from the host name and every
resource carries the ownership tags, so destroy finds them without the inventory.
docs/providers.md has the details.
"""

from __future__ import annotations

import logging
import os

from cloudmig import errors
from cloudmig.inventory import HostRecord, Inventory
from cloudmig.providers import HostSpec, Progress, _no_progress, cloud_errors, cloud_host
from cloudmig.providers.azure import facts

__all__ = ["AzureProvider"]

log = logging.getLogger(__name__)


class AzureProvider:
    name = "azure"
    capabilities = frozenset({"create", "destroy", "tunnel-firewall"})
    option_help = facts.OPTION_HELP

    def __init__(self, inventory: Inventory | None = None, credential=None) -> None:
        """``credential``: any azure-core TokenCredential; default DefaultAzureCredential()."""
        self.inv = inventory or Inventory()
        self._credential = credential

    # ------------------------------------------------------------------ provider verbs
    def plan_create(self, spec: HostSpec) -> list[str]:
        checked = cloud_host.check_spec(self.name, spec, self.option_help, facts.option_checks())
        opts = checked.options
        n = facts.names(spec.name)
        group = opts.get("resource_group", n["resource_group"])
        location = opts.get("location", facts.DEFAULT_LOCATION)
        return [f"resource group {group} in {location} (created unless it exists; deleted with the host only if created)",
                f"network security group {n['nsg']}: {checked.firewall_line()}",
                f"virtual network {n['vnet']} {facts.VNET_PREFIX}, subnet {n['subnet']} {facts.SUBNET_PREFIX}",
                f"public IP {n['public_ip']} (static, Standard)",
                f"network interface {n['nic']}",
                f"virtual machine {n['vm']} {opts.get('vm_size', facts.DEFAULT_VM_SIZE)}, image "
                f"{opts.get('image', facts.DEBIAN_IMAGE)}, os disk {n['os_disk']}, cloud-init custom data "
                f"running cloudmig/bootstrap-host",
                cloud_host.tags_line(spec.name)] + ([checked.warning] if checked.warning else [])

    def create_host(self, spec: HostSpec, progress: Progress = _no_progress) -> HostRecord:
        from cloudmig.providers.azure import arm

        checked = cloud_host.check_spec(self.name, spec, self.option_help, facts.option_checks())
        opts = checked.options
        location = opts.get("location", facts.DEFAULT_LOCATION)
        vm_size = opts.get("vm_size", facts.DEFAULT_VM_SIZE)
        image = opts.get("image", facts.DEBIAN_IMAGE)
        arm.image_parts(image)               # refused before anything is made
        n = facts.names(spec.name)
        group = opts.get("resource_group", n["resource_group"])
        clients, subscription = self._clients(opts)
        tags = cloud_host.ownership_tags(spec.name)
        existing_tags = arm.group_tags(clients, group)        # also proves the credentials work
        if checked.warning:
            progress(checked.warning)

        record = cloud_host.reserve(self.inv, spec, {**opts, "subscription_id": subscription,
                                                     "location": location, "resource_group": group})
        try:
            access = cloud_host.prepare_access(spec)
            user_data = cloud_host.user_data_for(spec, access)
            with cloud_host.Rollback(progress) as undo:
                if existing_tags is None:
                    arm.create_group(clients, group, location, tags)
                    undo.push(f"resource group {group}", lambda: arm.delete_group(clients, group, progress))
                    progress(f"resource group {group} in {location}")
                else:
                    progress(f"resource group {group} exists: using it (it stays after destroy)")

                def made(kind: str) -> None:
                    undo.push(f"{kind.replace('_', ' ')} {n[kind]}",
                              lambda: arm.delete(clients, kind, group, n[kind], progress))

                nsg_id = arm.create_nsg(clients, group, n["nsg"], location, tags, checked.operator_cidr,
                                        checked.peers, checked.wg_port, progress)
                made("nsg")
                subnet_id = arm.create_vnet(clients, group, n["vnet"], n["subnet"], location, tags, progress)
                made("vnet")
                ip_id = arm.create_public_ip(clients, group, n["public_ip"], location, tags, progress)
                made("public_ip")
                nic_id = arm.create_nic(clients, group, n["nic"], location, tags, subnet_id, ip_id, nsg_id, progress)
                made("nic")
                poller = arm.begin_vm(clients, group, n["vm"], location, tags, vm_size, image, n["os_disk"],
                                      nic_id, access.public_key, user_data)
                made("os_disk")      # a VM whose creation failed may have left its disk
                made("vm")
                arm.wait(poller, f"virtual machine {n['vm']}", progress)
                address = arm.public_address(clients, group, n["public_ip"])
        except BaseException:
            cloud_host.forget_host(self.inv, spec.name)
            raise
        resources = {"subscription_id": subscription, "resource_group": group,
                     "resource_group_owned": "true" if existing_tags is None else "false",
                     **{kind: n[kind] for kind in ("vm", "nic", "public_ip", "vnet", "nsg", "os_disk")}}
        cloud_host.mark_running(self.inv, record, address, resources, access)
        progress(f"{spec.name}: VM running at {address}; cloud-init is bootstrapping it")
        return record

    def describe_host(self, record: HostRecord) -> HostRecord:
        from cloudmig.providers.azure import arm

        copy = record.model_copy(deep=True)
        clients, _ = self._clients(record.options)
        group = record.resources.get("resource_group") or facts.names(record.name)["resource_group"]
        state = arm.vm_state(clients, group, record.resources.get("vm", record.name))
        copy.state = "gone" if state is None else facts.HOST_STATES.get(state.lower(), "error")
        return copy

    def list_hosts(self) -> list[HostRecord]:
        """VMs of the subscription tagged cloudmig:managed=true."""
        clients, subscription = self._clients({})
        with cloud_errors.translated("azure", "listing cloudmig's virtual machines"):
            vms = list(clients.compute.virtual_machines.list_all())
        hosts = []
        for vm in vms:
            tags = vm.tags or {}
            if tags.get(cloud_host.TAG_MANAGED) != "true" or cloud_host.TAG_HOST not in tags:
                continue
            group = vm.id.split("/")[4]
            state = (vm.properties.provisioning_state or "").lower()
            hosts.append(HostRecord(name=tags[cloud_host.TAG_HOST], provider=self.name, transport="ssh",
                                    state=facts.HOST_STATES.get(state, "error"),
                                    resources={"subscription_id": subscription, "resource_group": group,
                                               "vm": vm.name}))
        return hosts

    def destroy_host(self, record: HostRecord, progress: Progress = _no_progress) -> None:
        """Delete the host's resources by their derived names, then its resource group if cloudmig made it."""
        from cloudmig.providers.azure import arm

        n = facts.names(record.name)
        n.update({k: v for k, v in record.resources.items() if k in n})
        group = record.resources.get("resource_group") or record.options.get("resource_group") or n["resource_group"]
        clients, _ = self._clients(record.options)
        tags = arm.group_tags(clients, group)
        if tags is None:
            progress(f"{record.name}: resource group {group} is gone; nothing left")
        else:
            for kind in arm.DELETE_ORDER:
                arm.delete(clients, kind, group, n[kind], progress)
            # a group is removed only if cloudmig made it for this host (its tags say so)
            if tags.get(cloud_host.TAG_HOST) == record.name and tags.get(cloud_host.TAG_MANAGED) == "true":
                arm.delete_group(clients, group, progress)
        cloud_host.forget_host(self.inv, record.name)
        progress(f"{record.name}: destroyed")

    def allow_tunnel_peer(self, record: HostRecord, peer_address: str, port: int) -> None:
        from cloudmig.providers.azure import arm

        clients, _ = self._clients(record.options)
        group = record.resources.get("resource_group") or facts.names(record.name)["resource_group"]
        nsg = record.resources.get("nsg") or facts.names(record.name)["nsg"]
        arm.allow_udp(clients, group, nsg, cloud_host.peer_cidr(peer_address), port, _no_progress)

    def revoke_tunnel_peer(self, record: HostRecord, peer_address: str, port: int) -> None:
        from cloudmig.providers.azure import arm

        clients, _ = self._clients(record.options)
        group = record.resources.get("resource_group") or facts.names(record.name)["resource_group"]
        nsg = record.resources.get("nsg") or facts.names(record.name)["nsg"]
        arm.revoke_udp(clients, group, nsg, cloud_host.peer_cidr(peer_address), port, _no_progress)

    # ------------------------------------------------------------------ helpers
    def _clients(self, opts: dict[str, str]):
        from cloudmig.providers.azure import arm

        subscription = opts.get("subscription_id") or os.environ.get("AZURE_SUBSCRIPTION_ID")
        if not subscription:
            raise errors.ConfigError("No Azure subscription is configured.",
                                     hint="Set AZURE_SUBSCRIPTION_ID or pass --option subscription_id=....")
        base_url = opts.get("arm_endpoint") or os.environ.get(facts.ARM_ENDPOINT_ENV) or None
        credential = self._credential
        # the credential chain logs a warning per credential it tried; our error says it in one sentence
        logging.getLogger("azure.identity").setLevel(logging.ERROR)
        if credential is None:
            try:
                from azure.identity import DefaultAzureCredential
            except ImportError:
                raise errors.ConfigError("The azure provider needs azure-identity.",
                                         hint="Install it: pip install 'cloudmig[azure]'.") from None
            with cloud_errors.translated("azure", "reading the Azure credentials"):
                credential = DefaultAzureCredential()
        return arm.Clients.connect(credential, subscription, base_url), subscription
