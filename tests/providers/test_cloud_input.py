"""Input the clouds' providers check before their first write, against moto's EC2 and the ARM
server: option values, the operator's CIDR (IPv4, IPv6, host bits, the whole internet),
Azure without credentials, and EC2's DependencyViolation while a security group is let go."""

from __future__ import annotations

import ipaddress
import logging
import time

import pytest

from cloudmig import errors
from cloudmig.inventory import Inventory
from cloudmig.providers import HostSpec
from cloudmig.providers.aws import AwsProvider, facts as aws_facts
from cloudmig.providers.aws import ec2 as ec2_ops
from cloudmig.providers.azure import AzureProvider

from cloudsim.arm_server import FixedTokenCredential
from lab import cloudmig

OPERATOR = "203.0.113.7/32"


def _all_instances(ec2) -> list[str]:
    """Every instance moto has seen, terminated ones too: a launch leaves a trace."""
    return sorted(i["InstanceId"] for r in ec2.describe_instances()["Reservations"] for i in r["Instances"])


def _spec(provider: str, name: str, operator: str = OPERATOR, **options: str) -> HostSpec:
    return HostSpec(name=name, provider=provider, operator_cidr=operator, options=options)


@pytest.mark.parametrize("option", ["elastic_ip=maybe", "image=debian-12", "instance_type=large",
                                    "region=Mars"])
def test_a_bad_aws_option_is_refused_before_anything_is_launched(aws_env, option):
    ec2 = aws_env.ec2()
    launched = _all_instances(ec2)
    key, _, value = option.partition("=")
    with pytest.raises(errors.ConfigError, match=key):
        AwsProvider().create_host(_spec("aws", "opt1", **{key: value}))
    assert _all_instances(ec2) == launched
    assert not ec2.describe_key_pairs(Filters=[{"Name": "key-name", "Values": ["cloudmig-opt1"]}])["KeyPairs"]
    assert "opt1" not in Inventory().read().hosts


@pytest.mark.parametrize("option", ["image=debian-12", "vm_size=big size", "location=West Europe",
                                    "arm_endpoint=http://127.0.0.1:1"])
def test_a_bad_azure_option_is_refused_before_any_request(azure_env, option):
    key, _, value = option.partition("=")
    with pytest.raises(errors.ConfigError, match=key):
        AzureProvider(credential=FixedTokenCredential()).create_host(_spec("azure", "opt2", **{key: value}))
    assert azure_env.requests == []


def test_host_bits_are_refused_with_both_readings(aws_env):
    with pytest.raises(errors.ConfigError) as exc:
        AwsProvider().create_host(_spec("aws", "bits1", operator="203.0.113.7/24"))
    assert "host bits" in str(exc.value)
    assert "203.0.113.7/32" in exc.value.hint and "203.0.113.0/24" in exc.value.hint
    with pytest.raises(errors.ConfigError, match="host bits"):
        AwsProvider().plan_create(_spec("aws", "bits1", operator="2001:db8::7/64"))


def test_ssh_from_anywhere_needs_the_flag_and_is_warned_loudly(aws_env, state_dir):
    env = dict(aws_env.env, CLOUDMIG_STATE_DIR=str(state_dir))
    res = cloudmig("host", "create", "--provider", "aws", "--operator-cidr", "0.0.0.0/0", "open1",
                   env=env, check=False)
    assert res.returncode != 0 and "whole internet" in res.stderr and "--allow-ssh-from-anywhere" in res.stderr
    assert "open1" not in Inventory().read().hosts

    res = cloudmig("host", "create", "--provider", "aws", "--operator-cidr", "0.0.0.0/0",
                   "--allow-ssh-from-anywhere", "--no-wait", "open1", env=env)
    assert "WARNING: SSH (tcp/22) is open to the whole internet (0.0.0.0/0)" in res.stdout
    ec2 = aws_env.ec2()
    [sg] = ec2.describe_security_groups(GroupNames=["cloudmig-open1"])["SecurityGroups"]
    assert [r["CidrIp"] for p in sg["IpPermissions"] for r in p["IpRanges"]] == ["0.0.0.0/0"]
    cloudmig("host", "destroy", "open1", env=env)


def test_an_ipv6_operator_gets_an_ipv6_rule_on_both_clouds(aws_env, azure_env):
    aws = AwsProvider()
    rec = aws.create_host(_spec("aws", "six1", operator="2001:db8:7::/48"))
    try:
        [sg] = aws_env.ec2().describe_security_groups(GroupIds=[rec.resources["security_group_id"]])["SecurityGroups"]
        [ssh] = [p for p in sg["IpPermissions"] if p["IpProtocol"] == "tcp"]
        assert ssh["IpRanges"] == [] and [r["CidrIpv6"] for r in ssh["Ipv6Ranges"]] == ["2001:db8:7::/48"]
    finally:
        aws.destroy_host(rec)

    azure = AzureProvider(credential=FixedTokenCredential())
    rec = azure.create_host(_spec("azure", "six2", operator="2001:db8:7::1"))
    try:
        [nsg] = [r for r in azure_env.live().values() if r["type"] == "Microsoft.Network/networkSecurityGroups"]
        [ssh] = [r for r in nsg["properties"]["securityRules"] if r["properties"]["protocol"] == "Tcp"]
        assert ssh["properties"]["sourceAddressPrefixes"] == ["2001:db8:7::1/128"]
    finally:
        azure.destroy_host(rec)


def test_azure_without_credentials_is_one_sentence(azure_env):
    """Real azure-identity credentials that cannot work here (no Azure CLI, no token cache),
    chained as DefaultAzureCredential chains them: no network, the same many-line failure."""
    from azure.identity import AzureCliCredential, ChainedTokenCredential, SharedTokenCacheCredential

    logging.getLogger("azure.identity").setLevel(logging.WARNING)
    chain = ChainedTokenCredential(SharedTokenCacheCredential(), AzureCliCredential())
    with pytest.raises(errors.ProviderError) as exc:
        AzureProvider(credential=chain).create_host(_spec("azure", "cred1"))
    text = f"{exc.value} {exc.value.hint}"
    assert str(exc.value).startswith("azure: no usable Azure credentials")
    assert "\n" not in text and "az login" in text and "AWS" not in text and "aws" not in text.lower().replace(
        "azure", "")
    assert azure_env.requests == [] and "cred1" not in Inventory().read().hosts


def test_destroy_waits_out_dependency_violation(aws_env, state_dir, monkeypatch):
    """The simulated EC2 keeps a terminated instance's security group busy for 2 s, as EC2
    does for a while: destroy retries and ends clean; a bound too short fails clearly."""
    aws = AwsProvider()
    rec = aws.create_host(_spec("aws", "dep1"))
    ec2 = aws_env.ec2()
    sg = rec.resources["security_group_id"]
    with monkeypatch.context() as m, pytest.raises(errors.ProviderError) as exc:
        m.setattr(aws_facts, "SG_IN_USE_TIMEOUT_S", 0)
        ec2_ops.delete_security_group(ec2, sg)         # its instance still runs
    assert exc.value.code == "DependencyViolation"

    lines: list[str] = []
    started = time.monotonic()
    aws.destroy_host(rec, lines.append)
    assert any("still in use" in line for line in lines), lines
    assert any(f"deleted security group {sg}" in line for line in lines)
    assert not ec2.describe_security_groups(Filters=[{"Name": "group-id", "Values": [sg]}])["SecurityGroups"]
    assert time.monotonic() - started < aws_facts.SG_IN_USE_TIMEOUT_S

    rec = aws.create_host(_spec("aws", "dep2"))
    with monkeypatch.context() as m:
        m.setattr(aws_facts, "SG_IN_USE_TIMEOUT_S", 0)
        with pytest.raises(errors.ProviderError, match="still in use after 0 s"):
            aws.destroy_host(rec)
    aws.destroy_host(Inventory().read().hosts.get("dep2") or rec)     # again, with time: clean
    assert not ec2.describe_security_groups(Filters=[{"Name": "group-name", "Values": ["cloudmig-dep2"]}])[
        "SecurityGroups"]


def test_simulated_clouds_hand_out_lab_addresses_only(aws_env, azure_env):
    lab_range = ipaddress.ip_network("198.18.0.0/15")
    aws = AwsProvider()
    rec = aws.create_host(_spec("aws", "addr1", elastic_ip="true"))
    try:
        info = ec2_ops.describe_instance(aws_env.ec2(), rec.resources["instance_id"])
        assert ipaddress.ip_address(info["PublicIpAddress"]) in lab_range
        assert ipaddress.ip_address(rec.public_address) in lab_range
    finally:
        aws.destroy_host(rec)
