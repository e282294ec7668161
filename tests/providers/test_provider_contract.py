"""One contract, every cloud provider: same verbs, same expectations (aws on moto, azure on ARM)."""

from __future__ import annotations

import pytest

from cloudmig import errors, providers
from cloudmig.inventory import Inventory
from cloudmig.providers import HostSpec

from arm_server import FixedTokenCredential


@pytest.fixture(params=["aws", "azure"])
def cloud(request):
    name = request.param
    request.getfixturevalue(f"{name}_env")
    if name == "aws":
        from cloudmig.providers.aws import AwsProvider
        return AwsProvider()
    from cloudmig.providers.azure import AzureProvider
    return AzureProvider(credential=FixedTokenCredential())


def _spec(provider, name):
    return HostSpec(name=name, provider=provider, operator_cidr="203.0.113.7/32", tunnel_peers=["198.51.100.2"])


def test_is_a_provider_and_registered(cloud):
    assert isinstance(cloud, providers.Provider)
    assert type(providers.load(cloud.name)) is type(cloud)
    assert {"create", "destroy", "tunnel-firewall"} <= cloud.capabilities
    assert "wg_port" in cloud.option_help


def test_plan_create_changes_nothing(cloud, state_dir):
    lines = cloud.plan_create(_spec(cloud.name, "ct0"))
    assert any("cloudmig:host=ct0" in line for line in lines)
    assert cloud.list_hosts() == [] or "ct0" not in [h.name for h in cloud.list_hosts()]
    assert not (state_dir / "inventory.json").exists()


def test_create_describe_list_destroy_twice(cloud):
    name = f"ct-{cloud.name}"
    rec = cloud.create_host(_spec(cloud.name, name))
    assert rec.state == "running" and rec.public_address and rec.transport == "ssh"
    assert rec.agent["ssh_target"] == f"root@{rec.public_address}"
    assert name in [h.name for h in cloud.list_hosts()]
    assert cloud.describe_host(rec).state == "running"
    cloud.allow_tunnel_peer(rec, "192.0.2.77", 51820)
    cloud.destroy_host(rec)
    assert name not in [h.name for h in cloud.list_hosts()]
    assert cloud.describe_host(rec).state == "gone"
    cloud.destroy_host(rec)
    assert name not in Inventory().read().hosts


def test_refuses_bad_input_before_any_change(cloud, state_dir):
    with pytest.raises(errors.ConfigError):
        cloud.create_host(HostSpec(name="ct1", provider=cloud.name))              # no operator CIDR
    with pytest.raises(errors.ConfigError):
        cloud.create_host(_spec(cloud.name, "Bad_Name"))
    bad_peer = _spec(cloud.name, "ct2")
    bad_peer.tunnel_peers = ["not-an-ip"]
    with pytest.raises(errors.ConfigError):
        cloud.create_host(bad_peer)
    assert Inventory().read().hosts == {}


def test_a_name_in_use_is_refused(cloud):
    rec = cloud.create_host(_spec(cloud.name, "dup1"))
    try:
        with pytest.raises(errors.ConfigError, match="already exists"):
            cloud.create_host(_spec(cloud.name, "dup1"))
        assert "dup1" in Inventory().read().hosts
    finally:
        cloud.destroy_host(rec)
