"""The azure provider's real azure-mgmt clients against the strict local ARM server (TLS)."""

from __future__ import annotations

import base64
import ipaddress

import pytest
import yaml

from cloudmig import errors
from cloudmig.inventory import Inventory
from cloudmig.providers import HostSpec, cloud_host, cloudinit
from cloudmig.providers.azure import AzureProvider

from cloudsim.arm_server import FixedTokenCredential

OPERATOR = "203.0.113.7/32"
PEER = "198.51.100.2"


def _spec(name, **options):
    return HostSpec(name=name, provider="azure", operator_cidr=OPERATOR, tunnel_peers=[PEER], options=options)


def _types(arm):
    return sorted(r["type"] for r in arm.live().values())


def test_lifecycle(azure_env, state_dir):
    arm = azure_env
    cred = FixedTokenCredential()
    azure = AzureProvider(credential=cred)
    lines = []
    rec = azure.create_host(_spec("az1"), lines.append)

    assert rec.state == "running" and ipaddress.ip_address(rec.public_address) in ipaddress.ip_network("198.18.0.0/15")
    assert Inventory().read().hosts["az1"].public_address == rec.public_address
    assert cred.scopes and cred.scopes[0] == ("https://management.azure.com/.default",)
    live = arm.live()
    assert _types(arm) == sorted(["Microsoft.Resources/resourceGroups", "Microsoft.Network/networkSecurityGroups",
                                  "Microsoft.Network/virtualNetworks", "Microsoft.Network/publicIPAddresses",
                                  "Microsoft.Network/networkInterfaces", "Microsoft.Compute/virtualMachines",
                                  "Microsoft.Compute/disks"])
    for res in live.values():
        assert res["tags"] == cloud_host.ownership_tags("az1"), res["id"]
        assert res["properties"]["provisioningState"] == "Succeeded", res["id"]
    vm = next(r for r in live.values() if r["type"] == "Microsoft.Compute/virtualMachines")
    custom = cloudinit.unpack(base64.b64decode(vm["properties"]["osProfile"]["customData"]))
    doc = yaml.safe_load(custom)
    files = {f["path"]: f for f in doc["write_files"]}
    token = (state_dir / "hosts" / "az1" / "agent.token").read_text()
    assert files[cloudinit.AGENT_TOKEN_PATH]["content"] == token
    assert files[cloudinit.AGENT_TOKEN_PATH]["permissions"] == "0600"
    nsg = next(r for r in live.values() if r["type"] == "Microsoft.Network/networkSecurityGroups")
    rules = {(r["properties"]["protocol"], r["properties"]["destinationPortRange"]):
             r["properties"]["sourceAddressPrefixes"] for r in nsg["properties"]["securityRules"]}
    assert rules == {("Tcp", "22"): [OPERATOR], ("Udp", "51820"): [f"{PEER}/32"]}
    # long-running operations were really polled, and nothing was refused on the way
    assert any("/operations/" in path for _, path in arm.requests)
    assert arm.refusals == []
    assert any("virtual machine az1: done" in line for line in lines)

    azure.allow_tunnel_peer(rec, "192.0.2.9", 51820)
    azure.allow_tunnel_peer(rec, "192.0.2.9", 51820)
    nsg = next(r for r in arm.live().values() if r["type"] == "Microsoft.Network/networkSecurityGroups")
    assert sum(["192.0.2.9/32"] == r["properties"]["sourceAddressPrefixes"]
               for r in nsg["properties"]["securityRules"]) == 1
    azure.revoke_tunnel_peer(rec, "192.0.2.9", 51820)
    azure.revoke_tunnel_peer(rec, "192.0.2.9", 51820)   # twice is fine
    nsg = next(r for r in arm.live().values() if r["type"] == "Microsoft.Network/networkSecurityGroups")
    assert [r["properties"]["sourceAddressPrefixes"] for r in nsg["properties"]["securityRules"]
            if r["properties"]["protocol"] == "Udp"] == [[f"{PEER}/32"]]      # the others stay

    assert azure.describe_host(rec).state == "running"
    assert [h.name for h in azure.list_hosts()] == ["az1"]

    azure.destroy_host(rec, lines.append)
    assert arm.live() == {}
    assert arm.refusals == []
    assert "az1" not in Inventory().read().hosts
    assert azure.describe_host(rec).state == "gone"
    again = []
    azure.destroy_host(rec, again.append)                 # a no-op
    assert any("nothing left" in line for line in again)


def test_allocation_failure_removes_partial_resources(azure_env):
    arm = azure_env
    arm.fail_type["microsoft.compute/virtualmachines"] = (
        "AllocationFailed", "Allocation failed. We do not have sufficient capacity for the requested VM size.")
    lines = []
    with pytest.raises(errors.ProviderError) as exc:
        AzureProvider(credential=FixedTokenCredential()).create_host(_spec("az2"), lines.append)
    assert exc.value.code == "AllocationFailed"
    assert "capacity" in str(exc.value) and "vm_size" in str(exc.value)
    assert arm.live() == {}, arm.live().keys()
    assert any(line.startswith("removed virtual") or "removed vm" in line for line in lines), lines
    assert "az2" not in Inventory().read().hosts


def test_bad_token_is_refused_and_creates_nothing(azure_env):
    with pytest.raises(errors.ProviderError) as exc:
        AzureProvider(credential=FixedTokenCredential("wrong")).create_host(_spec("az3"))
    assert exc.value.code == "InvalidAuthenticationToken"
    assert "az login" in str(exc.value)
    assert azure_env.live() == {}


def test_existing_resource_group_is_kept(azure_env):
    arm = azure_env
    azure = AzureProvider(credential=FixedTokenCredential())
    from azure.mgmt.resource.resources import ResourceManagementClient
    rm = ResourceManagementClient(FixedTokenCredential(), arm.subscription, base_url=arm.url)
    rm.resource_groups.create_or_update("shared-rg", {"location": "westeurope"})
    rec = azure.create_host(_spec("az4", resource_group="shared-rg"))
    azure.destroy_host(rec)
    assert list(arm.live()) == [f"/subscriptions/{arm.subscription}/resourcegroups/shared-rg"]


def test_missing_subscription_is_a_config_error(azure_env, monkeypatch):
    monkeypatch.delenv("AZURE_SUBSCRIPTION_ID")
    with pytest.raises(errors.ConfigError, match="AZURE_SUBSCRIPTION_ID"):
        AzureProvider(credential=FixedTokenCredential()).create_host(_spec("az5"))


@pytest.mark.parametrize("case, status, code", [
    ("no-token", 401, "AuthenticationFailed"),
    ("no-api-version", 400, "MissingApiVersionParameter"),
    ("snake_case", 400, "InvalidRequestContent"),
    ("no-envelope", 400, "InvalidRequestContent"),
    ("dangling-reference", 400, "InvalidResourceReference"),
])
def test_the_arm_server_refuses_sloppy_requests(azure_env, case, status, code):
    """The server's checks are real: what a wrong client would send is refused."""
    import requests
    arm = azure_env
    base = f"{arm.url}/subscriptions/{arm.subscription}/resourceGroups"
    auth = {"Authorization": "Bearer arm-test-token-7f3c"}
    requests.put(f"{base}/rg1?api-version=2025-04-01", json={"location": "westeurope"}, headers=auth,
                 verify=str(arm.ca_path)).raise_for_status()
    nic = f"{base}/rg1/providers/Microsoft.Network/networkInterfaces/n1?api-version=2024-05-01"
    good = {"location": "westeurope", "properties": {"ipConfigurations": [{"name": "p", "properties": {
        "subnet": {"id": f"/subscriptions/{arm.subscription}/resourceGroups/rg1/providers/"
                         "Microsoft.Network/virtualNetworks/v/subnets/default"}}}]}}
    url, body, headers = nic, good, auth
    if case == "no-token":
        headers = {}
    elif case == "no-api-version":
        url = nic.split("?")[0]
    elif case == "snake_case":
        body = {"location": "westeurope", "properties": {"ip_configurations": []}}
    elif case == "no-envelope":
        body = {"location": "westeurope", "ipConfigurations": []}
    res = requests.put(url, json=body, headers=headers, verify=str(arm.ca_path))
    assert res.status_code == status and res.json()["error"]["code"] == code
