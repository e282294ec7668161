"""Stateless facts about Azure that the azure provider relies on (no SDK, no network).

    from cloudmig.providers.azure import facts
    facts.DEBIAN_IMAGE      # publisher:offer:sku:version of Debian 12 (Gen2) on the marketplace
"""

from __future__ import annotations

DEFAULT_LOCATION = "westeurope"
DEFAULT_VM_SIZE = "Standard_B2s"               # 2 vCPU, 4 GiB
DEBIAN_IMAGE = "Debian:debian-12:12-gen2:latest"
ADMIN_USERNAME = "cloudmig"                    # Azure forbids "root"; cloud-init authorizes root too
VNET_PREFIX = "10.42.0.0/16"
SUBNET_PREFIX = "10.42.0.0/24"
SSH_RULE_PRIORITY = 100
PEER_RULE_PRIORITY = 110                       # then 111, 112, ... one rule per tunnel peer
LRO_PROGRESS_EVERY_S = 15                      # a progress line this often while a long operation runs
LRO_TIMEOUT_S = 1800                           # 30 minutes for any single long-running operation
ARM_ENDPOINT_ENV = "CLOUDMIG_AZURE_ARM_ENDPOINT"

# VM provisioning state -> cloudmig host state ("running" = the VM is up; the agent may still be
# bootstrapping, see docs/providers.md)
HOST_STATES = {"creating": "pending", "updating": "pending", "succeeded": "running", "failed": "error",
               "deleting": "gone"}

OPTION_HELP = {
    "subscription_id": "Azure subscription (default: AZURE_SUBSCRIPTION_ID)",
    "location": f"Azure location (default {DEFAULT_LOCATION})",
    "vm_size": f"VM size (default {DEFAULT_VM_SIZE})",
    "image": f"marketplace image publisher:offer:sku:version (default {DEBIAN_IMAGE})",
    "resource_group": "resource group to use (default cloudmig-NAME, created and deleted with the host; "
                      "an existing group is used and kept)",
    "wg_port": "WireGuard UDP port opened to tunnel peers (default 51820)",
    "arm_endpoint": f"Resource Manager URL (default: Azure's public cloud; or ${ARM_ENDPOINT_ENV})",
}


def names(host: str) -> dict[str, str]:
    """The names of a host's resources: deterministic, so destroy finds them without the inventory."""
    return {"resource_group": f"cloudmig-{host}", "nsg": f"{host}-nsg", "vnet": f"{host}-vnet",
            "subnet": "default", "public_ip": f"{host}-ip", "nic": f"{host}-nic", "vm": host,
            "os_disk": f"{host}-osdisk"}


def option_checks() -> dict:
    """How each option's value is checked before anything is made (cloud_host.check_spec)."""
    from cloudmig.providers import cloud_host
    return {"subscription_id": cloud_host.check_pattern(r"[0-9a-fA-F]{8}(-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}",
                                                        "00000000-1111-2222-3333-444444444444"),
            "location": cloud_host.check_pattern(r"[a-z0-9]+", DEFAULT_LOCATION),
            "vm_size": cloud_host.check_pattern(r"[A-Za-z0-9_]+", DEFAULT_VM_SIZE),
            "image": cloud_host.check_pattern(r"[^:\s]+:[^:\s]+:[^:\s]+:[^:\s]+", DEBIAN_IMAGE),
            "resource_group": cloud_host.check_pattern(r"[-\w.()]{1,89}[-\w()]", "cloudmig-web2"),
            "arm_endpoint": cloud_host.check_pattern(r"https://[^\s/]+(/[^\s]*)?", "https://management.azure.com")}
