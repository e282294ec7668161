"""The aws provider against moto's EC2 server (validation on, requests signed with IAM keys)."""

from __future__ import annotations

import os
import stat

import pytest

from cloudmig import errors
from cloudmig.inventory import Inventory
from cloudmig.providers import HostSpec, cloud_host, cloudinit
from cloudmig.providers.aws import AwsProvider

import cloudsim.moto_server as ms

OPERATOR = "203.0.113.7/32"
PEER = "198.51.100.2"


def _spec(name, **options):
    return HostSpec(name=name, provider="aws", operator_cidr=OPERATOR, tunnel_peers=[PEER], options=options)


def _tagged(ec2, name):
    """Everything in the account tagged as host ``name``'s, live resources only."""
    flt = [{"Name": f"tag:{cloud_host.TAG_HOST}", "Values": [name]}]
    instances = [i for r in ec2.describe_instances(Filters=flt)["Reservations"] for i in r["Instances"]
                 if i["State"]["Name"] != "terminated"]
    return {"instances": instances,
            "groups": ec2.describe_security_groups(Filters=flt)["SecurityGroups"],
            "keys": ec2.describe_key_pairs(Filters=flt)["KeyPairs"],
            "addresses": ec2.describe_addresses(Filters=flt)["Addresses"]}


def _nothing_left(ec2, name):
    left = _tagged(ec2, name)
    assert all(not v for v in left.values()), left
    # nor under the names create would have used
    assert not [g for g in ec2.describe_security_groups()["SecurityGroups"] if g["GroupName"] == f"cloudmig-{name}"]
    assert not [k for k in ec2.describe_key_pairs()["KeyPairs"] if k["KeyName"] == f"cloudmig-{name}"]


def test_lifecycle_with_elastic_ip(aws_env, state_dir):
    ec2 = aws_env.ec2()
    lines = []
    aws = AwsProvider()
    rec = aws.create_host(_spec("web1", elastic_ip="true"), lines.append)

    assert rec.state == "running" and rec.transport == "ssh"
    assert Inventory().read().hosts["web1"].public_address == rec.public_address
    got = _tagged(ec2, "web1")
    (inst,) = got["instances"]
    assert inst["ImageId"] == ms.NEWEST_AMD64           # newest Debian 12 amd64 by owner/name
    assert inst["InstanceType"] == "t3.small" and inst["KeyName"] == "cloudmig-web1"
    (addr,) = got["addresses"]
    assert addr["PublicIp"] == rec.public_address and addr["InstanceId"] == inst["InstanceId"]
    (key,) = got["keys"]
    assert key["KeyType"] == "ed25519"
    (sg,) = got["groups"]
    rules = {(p["IpProtocol"], p["FromPort"]): sorted(r["CidrIp"] for r in p["IpRanges"]) for p in sg["IpPermissions"]}
    assert rules == {("tcp", 22): [OPERATOR], ("udp", 51820): [f"{PEER}/32"]}
    tags = {t["Key"]: t["Value"] for t in inst["Tags"]}
    assert tags[cloud_host.TAG_MANAGED] == "true"

    user_data = ec2.describe_instance_attribute(InstanceId=inst["InstanceId"], Attribute="userData")
    import base64
    text = cloudinit.unpack(base64.b64decode(user_data["UserData"]["Value"]))   # gzip, as cloud-init reads it
    assert text.startswith("#cloud-config") and cloudinit.AGENT_TOKEN_PATH in text

    # secrets: token and private key are 0600 files in the state dir, never in the inventory
    for f in (state_dir / "hosts" / "web1" / "agent.token", state_dir / "hosts" / "web1" / "ssh_key"):
        assert stat.S_IMODE(os.stat(f).st_mode) == 0o600
    assert open(state_dir / "hosts" / "web1" / "agent.token").read() not in (state_dir / "inventory.json").read_text()
    assert any("security group" in line for line in lines)

    aws.allow_tunnel_peer(rec, "192.0.2.9", 51820)
    aws.allow_tunnel_peer(rec, "192.0.2.9", 51820)     # twice is fine
    sg = ec2.describe_security_groups(GroupIds=[sg["GroupId"]])["SecurityGroups"][0]
    udp = [p for p in sg["IpPermissions"] if p["IpProtocol"] == "udp"][0]
    assert sorted(r["CidrIp"] for r in udp["IpRanges"]) == ["192.0.2.9/32", f"{PEER}/32"]
    aws.revoke_tunnel_peer(rec, "192.0.2.9", 51820)
    aws.revoke_tunnel_peer(rec, "192.0.2.9", 51820)    # twice is fine
    sg = ec2.describe_security_groups(GroupIds=[sg["GroupId"]])["SecurityGroups"][0]
    udp = [p for p in sg["IpPermissions"] if p["IpProtocol"] == "udp"][0]
    assert [r["CidrIp"] for r in udp["IpRanges"]] == [f"{PEER}/32"]            # the others stay

    assert aws.describe_host(rec).state == "running"
    assert [h.name for h in aws.list_hosts()].count("web1") == 1

    aws.destroy_host(rec, lines.append)
    _nothing_left(ec2, "web1")
    assert "web1" not in Inventory().read().hosts
    assert not (state_dir / "hosts" / "web1").exists()
    assert aws.describe_host(rec).state == "gone"
    out = []
    aws.destroy_host(rec, out.append)                  # second destroy: a no-op
    assert any("nothing left" in line for line in out)


def test_invalid_instance_type_creates_nothing(aws_env):
    with pytest.raises(errors.ProviderError) as exc:
        AwsProvider().create_host(_spec("bad1", instance_type="t3.galactic"))
    assert exc.value.code == "InvalidInstanceType"
    assert "instance_type" in str(exc.value)
    _nothing_left(aws_env.ec2(), "bad1")
    assert "bad1" not in Inventory().read().hosts


def test_missing_image_creates_nothing(aws_env):
    with pytest.raises(errors.ProviderError) as exc:
        AwsProvider().create_host(_spec("bad2", image="ami-0123456789abcdef0"))
    assert exc.value.code.startswith("InvalidAMIID")
    assert "image" in str(exc.value)
    _nothing_left(aws_env.ec2(), "bad2")


def test_no_debian_image_for_the_architecture_creates_nothing(aws_env):
    # the catalogue has Debian 12 for amd64 only: a Graviton type finds no image
    with pytest.raises(errors.ProviderError) as exc:
        AwsProvider().create_host(_spec("bad3", instance_type="t4g.small"))
    assert "No Debian 12 image (debian-12-arm64-*" in str(exc.value) and "--option image" in str(exc.value)
    _nothing_left(aws_env.ec2(), "bad3")


def test_bad_credentials_create_nothing(aws_env, monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    with pytest.raises(errors.ProviderError) as exc:
        AwsProvider().create_host(_spec("bad4"))
    assert exc.value.code == "AuthFailure"
    assert "AWS_PROFILE" in str(exc.value)
    _nothing_left(aws_env.ec2(), "bad4")


def test_failure_after_resources_exist_removes_them(aws_env):
    # 61 tunnel peers exceed EC2's 60 inbound rules per security group: the key pair and the
    # security group exist when the rules are refused, and both must go again.
    spec = _spec("bad5")
    spec.tunnel_peers = [f"192.0.2.{i}" for i in range(1, 62)]
    lines = []
    with pytest.raises(errors.ProviderError) as exc:
        AwsProvider().create_host(spec, lines.append)
    assert exc.value.code == "RulesPerSecurityGroupLimitExceeded"
    assert "quota" in str(exc.value)
    assert any(line.startswith("removed key pair cloudmig-bad5") for line in lines), lines
    _nothing_left(aws_env.ec2(), "bad5")
    assert "bad5" not in Inventory().read().hosts


def test_unknown_option_is_refused_before_any_call(aws_env):
    with pytest.raises(errors.ConfigError, match="Unknown aws option"):
        AwsProvider().create_host(_spec("bad6", flavour="large"))


def test_ssh_needs_the_operator_cidr(aws_env):
    with pytest.raises(errors.ConfigError, match="--operator-cidr"):
        AwsProvider().create_host(HostSpec(name="bad7", provider="aws"))
