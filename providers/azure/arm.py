"""The Resource Manager calls of the azure provider, one small function per resource.

    clients = arm.Clients.connect(credential, subscription_id, base_url=None)
    nsg_id = arm.create_nsg(clients, "cloudmig-h3", names, "westeurope", tags, rules, progress)
    arm.delete(clients, "vm", "cloudmig-h3", "h3", progress)        # missing is fine

azure-mgmt-* are imported here only; models carry the wire format (camelCase, ``properties``
envelopes), the clients' pipeline adds ``api-version`` and the bearer token. Long-running
operations are waited for with a progress line every LRO_PROGRESS_EVERY_S.
"""

from __future__ import annotations

import base64
import dataclasses
import time
from typing import Any

from cloudmig import errors
from cloudmig.providers import Progress, cloud_errors
from cloudmig.providers.azure import facts


@dataclasses.dataclass
class Clients:
    resource: Any
    network: Any
    compute: Any

    @classmethod
    def connect(cls, credential, subscription_id: str, base_url: str | None) -> "Clients":
        try:
            from azure.mgmt.compute import ComputeManagementClient
            from azure.mgmt.network import NetworkManagementClient
            from azure.mgmt.resource.resources import ResourceManagementClient
        except ImportError:
            raise errors.ConfigError("The azure provider needs azure-mgmt-compute, -network and -resource.",
                                     hint="Install them: pip install 'cloudmig[azure]'.") from None
        kwargs = {"base_url": base_url} if base_url else {}
        return cls(resource=ResourceManagementClient(credential, subscription_id, **kwargs),
                   network=NetworkManagementClient(credential, subscription_id, **kwargs),
                   compute=ComputeManagementClient(credential, subscription_id, **kwargs))


def wait(poller, what: str, progress: Progress):
    """Wait for a long-running operation, with progress; its failure becomes a ProviderError."""
    started = time.monotonic()
    progress(f"{what}: started")
    with cloud_errors.translated("azure", what):
        while not poller.done():
            poller.wait(timeout=facts.LRO_PROGRESS_EVERY_S)
            elapsed = time.monotonic() - started
            if not poller.done():
                progress(f"{what}: {poller.status()} ({elapsed:.0f} s)")
                if elapsed > facts.LRO_TIMEOUT_S:
                    raise errors.ProviderError(f"{what} did not finish within {facts.LRO_TIMEOUT_S} s.",
                                               hint="Check the Azure portal; `cloudmig host destroy` cleans up.")
        result = poller.result()
    progress(f"{what}: done ({time.monotonic() - started:.1f} s)")
    return result


# ---------------------------------------------------------------------- resource group
def group_tags(clients: Clients, group: str) -> dict[str, str] | None:
    """The tags of resource group ``group``, None if it does not exist."""
    try:
        with cloud_errors.translated("azure", f"reading resource group {group}"):
            return dict(clients.resource.resource_groups.get(group).tags or {})
    except errors.ProviderError as exc:
        if exc.code in ("ResourceGroupNotFound", "HTTP404"):
            return None
        raise


def create_group(clients: Clients, group: str, location: str, tags: dict[str, str]) -> None:
    from azure.mgmt.resource.resources import models
    with cloud_errors.translated("azure", f"creating resource group {group}"):
        clients.resource.resource_groups.create_or_update(group, models.ResourceGroup(location=location, tags=tags))


# ---------------------------------------------------------------------- network
def create_nsg(clients: Clients, group: str, name: str, location: str, tags: dict[str, str],
               operator_cidr: str, peers: list[str], wg_port: int, progress: Progress) -> str:
    from azure.mgmt.network import models as m

    def rule(rule_name, protocol, sources, port, priority):
        return m.SecurityRule(name=rule_name, properties=m.SecurityRulePropertiesFormat(
            protocol=protocol, access="Allow", direction="Inbound", priority=priority,
            source_address_prefixes=sources, source_port_range="*",
            destination_address_prefix="*", destination_port_range=str(port)))

    rules = [rule("cloudmig-ssh-operator", "Tcp", [operator_cidr], 22, facts.SSH_RULE_PRIORITY)]
    rules += [rule(f"cloudmig-wg-peer-{i}", "Udp", [p], wg_port, facts.PEER_RULE_PRIORITY + i)
              for i, p in enumerate(peers)]
    body = m.NetworkSecurityGroup(location=location, tags=tags,
                                  properties=m.NetworkSecurityGroupPropertiesFormat(security_rules=rules))
    with cloud_errors.translated("azure", f"creating network security group {name}"):
        poller = clients.network.network_security_groups.begin_create_or_update(group, name, body)
    return wait(poller, f"network security group {name}", progress).id


def _is_udp_rule(rule, cidr: str, port: int) -> bool:
    return (rule.properties.protocol == "Udp" and cidr in (rule.properties.source_address_prefixes or [])
            and rule.properties.destination_port_range == str(port))


def revoke_udp(clients: Clients, group: str, nsg: str, cidr: str, port: int, progress: Progress) -> None:
    """Remove the rule that lets ``cidr`` reach UDP ``port``; a rule (or NSG) already gone is fine."""
    try:
        with cloud_errors.translated("azure", f"reading network security group {nsg}"):
            current = clients.network.network_security_groups.get(group, nsg)
    except errors.ProviderError as exc:
        if exc.code in ("ResourceNotFound", "ResourceGroupNotFound", "HTTP404"):
            return
        raise
    rules = list(current.properties.security_rules or [])
    kept = [r for r in rules if not _is_udp_rule(r, cidr, port)]
    if len(kept) == len(rules):
        return
    current.properties.security_rules = kept
    with cloud_errors.translated("azure", f"closing UDP {port} to {cidr}"):
        poller = clients.network.network_security_groups.begin_create_or_update(group, nsg, current)
    wait(poller, f"network security group {nsg}", progress)


def allow_udp(clients: Clients, group: str, nsg: str, cidr: str, port: int, progress: Progress) -> None:
    from azure.mgmt.network import models as m
    with cloud_errors.translated("azure", f"reading network security group {nsg}"):
        current = clients.network.network_security_groups.get(group, nsg)
    rules = list(current.properties.security_rules or [])
    for r in rules:
        if _is_udp_rule(r, cidr, port):
            return
    priority = max([facts.PEER_RULE_PRIORITY - 1] + [r.properties.priority for r in rules]) + 1
    rules.append(m.SecurityRule(name=f"cloudmig-wg-peer-{priority - facts.PEER_RULE_PRIORITY}",
                                properties=m.SecurityRulePropertiesFormat(
                                    protocol="Udp", access="Allow", direction="Inbound", priority=priority,
                                    source_address_prefixes=[cidr], source_port_range="*",
                                    destination_address_prefix="*", destination_port_range=str(port))))
    current.properties.security_rules = rules
    with cloud_errors.translated("azure", f"opening UDP {port} to {cidr}"):
        poller = clients.network.network_security_groups.begin_create_or_update(group, nsg, current)
    wait(poller, f"network security group {nsg}", progress)


def create_vnet(clients: Clients, group: str, name: str, subnet: str, location: str, tags: dict[str, str],
                progress: Progress) -> str:
    """The virtual network with one subnet; returns the subnet's id."""
    from azure.mgmt.network import models as m
    body = m.VirtualNetwork(location=location, tags=tags, properties=m.VirtualNetworkPropertiesFormat(
        address_space=m.AddressSpace(address_prefixes=[facts.VNET_PREFIX]),
        subnets=[m.Subnet(name=subnet, properties=m.SubnetPropertiesFormat(address_prefix=facts.SUBNET_PREFIX))]))
    with cloud_errors.translated("azure", f"creating virtual network {name}"):
        poller = clients.network.virtual_networks.begin_create_or_update(group, name, body)
    return wait(poller, f"virtual network {name}", progress).id + f"/subnets/{subnet}"


def create_public_ip(clients: Clients, group: str, name: str, location: str, tags: dict[str, str],
                     progress: Progress) -> str:
    from azure.mgmt.network import models as m
    body = m.PublicIPAddress(location=location, tags=tags, sku=m.PublicIPAddressSku(name="Standard"),
                             properties=m.PublicIPAddressPropertiesFormat(public_ip_allocation_method="Static"))
    with cloud_errors.translated("azure", f"creating public IP {name}"):
        poller = clients.network.public_ip_addresses.begin_create_or_update(group, name, body)
    return wait(poller, f"public IP {name}", progress).id


def public_address(clients: Clients, group: str, name: str) -> str | None:
    with cloud_errors.translated("azure", f"reading public IP {name}"):
        return clients.network.public_ip_addresses.get(group, name).properties.ip_address


def create_nic(clients: Clients, group: str, name: str, location: str, tags: dict[str, str], subnet_id: str,
               public_ip_id: str, nsg_id: str, progress: Progress) -> str:
    from azure.mgmt.network import models as m
    config = m.NetworkInterfaceIPConfiguration(
        name="primary", properties=m.NetworkInterfaceIPConfigurationPropertiesFormat(
            subnet=m.Subnet(id=subnet_id), public_ip_address=m.PublicIPAddress(id=public_ip_id),
            private_ip_allocation_method="Dynamic", primary=True))
    body = m.NetworkInterface(location=location, tags=tags, properties=m.NetworkInterfacePropertiesFormat(
        ip_configurations=[config], network_security_group=m.NetworkSecurityGroup(id=nsg_id)))
    with cloud_errors.translated("azure", f"creating network interface {name}"):
        poller = clients.network.network_interfaces.begin_create_or_update(group, name, body)
    return wait(poller, f"network interface {name}", progress).id


# ---------------------------------------------------------------------- compute
def begin_vm(clients: Clients, group: str, name: str, location: str, tags: dict[str, str], vm_size: str,
             image: str, os_disk: str, nic_id: str, public_key: str, custom_data: str | bytes):
    """Start creating the VM; returns the poller (the VM exists, possibly half-made, from now on)."""
    from azure.mgmt.compute import models as m
    publisher, offer, sku, version = image_parts(image)
    body = m.VirtualMachine(location=location, tags=tags, properties=m.VirtualMachineProperties(
        hardware_profile=m.HardwareProfile(vm_size=vm_size),
        storage_profile=m.StorageProfile(
            image_reference=m.ImageReference(publisher=publisher, offer=offer, sku=sku, version=version),
            os_disk=m.OSDisk(name=os_disk, create_option="FromImage", delete_option="Delete",
                             managed_disk=m.ManagedDiskParameters(storage_account_type="StandardSSD_LRS"))),
        os_profile=m.OSProfile(
            computer_name=name, admin_username=facts.ADMIN_USERNAME,
            custom_data=base64.b64encode(custom_data.encode() if isinstance(custom_data, str)
                                         else custom_data).decode(),
            linux_configuration=m.LinuxConfiguration(
                disable_password_authentication=True,
                ssh=m.SshConfiguration(public_keys=[m.SshPublicKey(
                    path=f"/home/{facts.ADMIN_USERNAME}/.ssh/authorized_keys", key_data=public_key)]))),
        network_profile=m.NetworkProfile(network_interfaces=[m.NetworkInterfaceReference(
            id=nic_id, properties=m.NetworkInterfaceReferenceProperties(primary=True))])))
    with cloud_errors.translated("azure", f"creating virtual machine {name}"):
        return clients.compute.virtual_machines.begin_create_or_update(group, name, body)


def vm_state(clients: Clients, group: str, name: str) -> str | None:
    """The VM's provisioning state (e.g. Succeeded), None if it does not exist."""
    try:
        with cloud_errors.translated("azure", f"reading virtual machine {name}"):
            return clients.compute.virtual_machines.get(group, name).properties.provisioning_state
    except errors.ProviderError as exc:
        if exc.code in ("ResourceNotFound", "ResourceGroupNotFound", "HTTP404"):
            return None
        raise


def image_parts(image: str) -> tuple[str, str, str, str]:
    parts = image.split(":")
    if len(parts) != 4 or not all(parts):
        raise errors.ConfigError(f"Azure image {image!r} is not publisher:offer:sku:version.",
                                 hint=f"For example {facts.DEBIAN_IMAGE}.")
    return parts[0], parts[1], parts[2], parts[3]


# ---------------------------------------------------------------------- delete
_DELETERS = {
    "vm": lambda c: c.compute.virtual_machines,
    "nic": lambda c: c.network.network_interfaces,
    "public_ip": lambda c: c.network.public_ip_addresses,
    "vnet": lambda c: c.network.virtual_networks,
    "nsg": lambda c: c.network.network_security_groups,
    "os_disk": lambda c: c.compute.disks,
}
DELETE_ORDER = ("vm", "os_disk", "nic", "public_ip", "vnet", "nsg")   # users before what they use


def delete(clients: Clients, kind: str, group: str, name: str, progress: Progress) -> None:
    """Delete one resource; a resource (or group) that is already gone is fine."""
    ops = _DELETERS[kind](clients)
    try:
        with cloud_errors.translated("azure", f"deleting {kind.replace('_', ' ')} {name}"):
            poller = ops.begin_delete(group, name)
        wait(poller, f"delete {kind.replace('_', ' ')} {name}", progress)
    except errors.ProviderError as exc:
        if exc.code not in ("ResourceNotFound", "ResourceGroupNotFound", "NotFound", "HTTP404"):
            raise


def delete_group(clients: Clients, group: str, progress: Progress) -> None:
    try:
        with cloud_errors.translated("azure", f"deleting resource group {group}"):
            poller = clients.resource.resource_groups.begin_delete(group)
        wait(poller, f"delete resource group {group}", progress)
    except errors.ProviderError as exc:
        if exc.code not in ("ResourceGroupNotFound", "HTTP404"):
            raise
