"""The EC2 calls of the aws provider, one small function per resource (a boto3 EC2 client in).

    ec2 = boto3.session.Session().client("ec2")
    image = ec2_ops.find_debian_image(ec2, "x86_64")
    sg = ec2_ops.create_security_group(ec2, "h3", vpc_id, "203.0.113.7/32", ["198.51.100.2/32"], 51820)
    owned = ec2_ops.find_owned(ec2, "h3")          # everything tagged cloudmig:host=h3
    ec2_ops.delete_owned(ec2, owned, progress)

Every call runs inside ``cloud_errors.translated`` so callers see ProviderError only.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import itertools
import logging
import time

from cloudmig import errors
from cloudmig.providers import Progress, cloud_errors, cloud_host
from cloudmig.providers.aws import facts

log = logging.getLogger(__name__)


def resource_name(host: str) -> str:
    return f"cloudmig-{host}"


def _tag_specs(host: str, *types: str) -> list[dict]:
    tags = [{"Key": k, "Value": v} for k, v in cloud_host.ownership_tags(host).items()]
    tags.append({"Key": "Name", "Value": resource_name(host)})
    return [{"ResourceType": t, "Tags": tags} for t in types]


def _owner_filters(host: str) -> list[dict]:
    return [{"Name": f"tag:{cloud_host.TAG_HOST}", "Values": [host]},
            {"Name": f"tag:{cloud_host.TAG_MANAGED}", "Values": ["true"]}]


def _sleeps():
    return itertools.chain(facts.POLL_INTERVALS_S, itertools.repeat(facts.POLL_INTERVALS_S[-1]))


# ---------------------------------------------------------------------- preflight (changes nothing)
def instance_architecture(ec2, instance_type: str) -> str:
    """The architecture of ``instance_type`` (x86_64 | arm64); the cloud refuses unknown types."""
    with cloud_errors.translated("aws", f"instance type {instance_type!r}"):
        types = ec2.describe_instance_types(InstanceTypes=[instance_type])["InstanceTypes"]
    archs = types[0].get("ProcessorInfo", {}).get("SupportedArchitectures", ["x86_64"]) if types else []
    for arch in archs:
        if arch in facts.DEBIAN_ARCH_NAMES:
            return arch
    raise errors.ProviderError(f"Instance type {instance_type} has no architecture Debian supports ({archs}).",
                               hint="Pick another --option instance_type=....", code="InvalidInstanceType")


def find_debian_image(ec2, arch: str) -> dict:
    """The newest official Debian 12 AMI for ``arch`` in the client's region."""
    pattern = facts.DEBIAN_IMAGE_NAME.format(arch=facts.DEBIAN_ARCH_NAMES[arch])
    with cloud_errors.translated("aws", "looking up the Debian 12 image"):
        images = ec2.describe_images(Owners=[facts.DEBIAN_OWNER_ID], Filters=[
            {"Name": "name", "Values": [pattern]}, {"Name": "architecture", "Values": [arch]},
            {"Name": "state", "Values": ["available"]}])["Images"]
    if not images:
        raise errors.ProviderError(
            f"No Debian 12 image ({pattern} from owner {facts.DEBIAN_OWNER_ID}) in region "
            f"{ec2.meta.region_name}.", hint="Give an AMI id with --option image=ami-....",
            code="InvalidAMIID.NotFound")
    return max(images, key=lambda i: (i.get("CreationDate", ""), i["Name"]))


def get_image(ec2, image_id: str, arch: str) -> dict:
    with cloud_errors.translated("aws", f"looking up image {image_id}"):
        images = ec2.describe_images(ImageIds=[image_id])["Images"]
    if not images:
        raise errors.ProviderError(f"Image {image_id} does not exist in region {ec2.meta.region_name}.",
                                   hint="Leave out --option image to use Debian 12.", code="InvalidAMIID.NotFound")
    if images[0].get("Architecture", arch) != arch:
        raise errors.ProviderError(f"Image {image_id} is {images[0]['Architecture']} but the instance type "
                                   f"runs {arch}.", hint="Pick a matching image or instance type.")
    return images[0]


def default_vpc(ec2) -> str:
    with cloud_errors.translated("aws", "finding the default VPC"):
        vpcs = ec2.describe_vpcs(Filters=[{"Name": "is-default", "Values": ["true"]}])["Vpcs"]
    if not vpcs:
        raise errors.ProviderError(f"Region {ec2.meta.region_name} has no default VPC.",
                                   hint="Create one with `aws ec2 create-default-vpc`.")
    return vpcs[0]["VpcId"]


# ---------------------------------------------------------------------- create
def _source(cidr: str, description: str) -> dict:
    """The part of an IpPermission naming one source: IpRanges for IPv4, Ipv6Ranges for IPv6."""
    if ipaddress.ip_network(cidr).version == 6:
        return {"Ipv6Ranges": [{"CidrIpv6": cidr, "Description": description}]}
    return {"IpRanges": [{"CidrIp": cidr, "Description": description}]}


def import_key_pair(ec2, host: str, public_key: str) -> str:
    name = resource_name(host)
    with cloud_errors.translated("aws", f"importing key pair {name}"):
        ec2.import_key_pair(KeyName=name, PublicKeyMaterial=public_key.encode(),
                            TagSpecifications=_tag_specs(host, "key-pair"))
    return name


def create_security_group(ec2, host: str, vpc_id: str, operator_cidr: str, peers: list[str],
                          wg_port: int) -> str:
    with cloud_errors.translated("aws", f"creating security group {resource_name(host)}"):
        sg_id = ec2.create_security_group(
            GroupName=resource_name(host), VpcId=vpc_id,
            Description=f"cloudmig host {host}: SSH from the operator, WireGuard from tunnel peers",
            TagSpecifications=_tag_specs(host, "security-group"))["GroupId"]
    rules = [{"IpProtocol": "tcp", "FromPort": cloud_host.SSH_PORT, "ToPort": cloud_host.SSH_PORT,
              **_source(operator_cidr, "cloudmig operator (SSH)")}]
    if peers:
        rules.append({"IpProtocol": "udp", "FromPort": wg_port, "ToPort": wg_port,
                      "IpRanges": [{"CidrIp": p, "Description": "cloudmig tunnel peer"} for p in peers]})
    try:
        with cloud_errors.translated("aws", f"opening ports of security group {sg_id}"):
            ec2.authorize_security_group_ingress(GroupId=sg_id, IpPermissions=rules)
    except errors.ProviderError:
        with cloud_errors.translated("aws", f"deleting security group {sg_id}"):
            ec2.delete_security_group(GroupId=sg_id)
        raise
    return sg_id


def _udp_rule(cidr: str, port: int) -> list[dict]:
    return [{"IpProtocol": "udp", "FromPort": port, "ToPort": port,
             "IpRanges": [{"CidrIp": cidr, "Description": "cloudmig tunnel peer"}]}]


def allow_udp(ec2, sg_id: str, cidr: str, port: int) -> None:
    try:
        with cloud_errors.translated("aws", f"opening UDP {port} to {cidr}"):
            ec2.authorize_security_group_ingress(GroupId=sg_id, IpPermissions=_udp_rule(cidr, port))
    except errors.ProviderError as exc:
        if exc.code != "InvalidPermission.Duplicate":
            raise


def revoke_udp(ec2, sg_id: str, cidr: str, port: int) -> None:
    try:
        with cloud_errors.translated("aws", f"closing UDP {port} to {cidr}"):
            ec2.revoke_security_group_ingress(GroupId=sg_id, IpPermissions=_udp_rule(cidr, port))
    except errors.ProviderError as exc:
        if exc.code not in ("InvalidPermission.NotFound", "InvalidGroup.NotFound"):
            raise


def run_instance(ec2, host: str, image_id: str, instance_type: str, key_name: str, sg_id: str,
                 user_data: str | bytes) -> str:
    with cloud_errors.translated("aws", f"starting a {instance_type} instance for {host}"):
        reservation = ec2.run_instances(
            ImageId=image_id, InstanceType=instance_type, KeyName=key_name, SecurityGroupIds=[sg_id],
            UserData=user_data, MinCount=1, MaxCount=1,
            MetadataOptions={"HttpTokens": "required", "HttpEndpoint": "enabled"},
            TagSpecifications=_tag_specs(host, "instance", "volume"))
    return reservation["Instances"][0]["InstanceId"]


def describe_instance(ec2, instance_id: str) -> dict | None:
    try:
        with cloud_errors.translated("aws", f"describing instance {instance_id}"):
            reservations = ec2.describe_instances(InstanceIds=[instance_id])["Reservations"]
    except errors.ProviderError as exc:
        if exc.code == "InvalidInstanceID.NotFound":
            return None
        raise
    instances = [i for r in reservations for i in r["Instances"]]
    return instances[0] if instances else None


def wait_instance(ec2, instance_id: str, want: str, timeout_s: float, progress: Progress) -> dict | None:
    """Poll until the instance is in state ``want`` (None once it no longer exists)."""
    deadline = time.monotonic() + timeout_s
    last = None
    for sleep_s in _sleeps():
        inst = describe_instance(ec2, instance_id)
        state = inst["State"]["Name"] if inst else "terminated"
        if state != last:
            progress(f"instance {instance_id}: {state}")
            last = state
        if state == want:
            return inst
        if want == "running" and state in ("shutting-down", "terminated", "stopped"):
            reason = (inst or {}).get("StateReason", {})
            raise errors.ProviderError(f"Instance {instance_id} stopped while starting: "
                                       f"{reason.get('Message', state)}.", code=reason.get("Code"))
        if time.monotonic() > deadline:
            raise errors.ProviderError(f"Instance {instance_id} is still {state} after {timeout_s:.0f} s.",
                                       hint="Check the EC2 console; `cloudmig host destroy` removes it.")
        time.sleep(sleep_s)
    return None


def allocate_address(ec2, host: str, instance_id: str) -> tuple[str, str]:
    """An Elastic IP for the instance: (allocation id, public address)."""
    with cloud_errors.translated("aws", f"allocating an Elastic IP for {host}"):
        addr = ec2.allocate_address(Domain="vpc", TagSpecifications=_tag_specs(host, "elastic-ip"))
    try:
        with cloud_errors.translated("aws", f"associating Elastic IP {addr['PublicIp']}"):
            ec2.associate_address(AllocationId=addr["AllocationId"], InstanceId=instance_id)
    except errors.ProviderError:
        release_address(ec2, addr["AllocationId"])
        raise
    return addr["AllocationId"], addr["PublicIp"]


# ---------------------------------------------------------------------- find and delete
@dataclasses.dataclass
class Owned:
    """Everything in one region that belongs to a host (by tags, or by the ids recorded)."""
    instances: list[str] = dataclasses.field(default_factory=list)
    allocations: list[str] = dataclasses.field(default_factory=list)
    security_groups: list[str] = dataclasses.field(default_factory=list)
    key_pairs: list[str] = dataclasses.field(default_factory=list)

    def empty(self) -> bool:
        return not (self.instances or self.allocations or self.security_groups or self.key_pairs)


def find_owned(ec2, host: str) -> Owned:
    flt = _owner_filters(host)
    with cloud_errors.translated("aws", f"finding the resources of host {host}"):
        reservations = ec2.describe_instances(Filters=flt + [{"Name": "instance-state-name", "Values": [
            "pending", "running", "stopping", "stopped", "shutting-down"]}])["Reservations"]
        addresses = ec2.describe_addresses(Filters=flt)["Addresses"]
        groups = ec2.describe_security_groups(Filters=flt)["SecurityGroups"]
        keys = ec2.describe_key_pairs(Filters=flt)["KeyPairs"]
    return Owned(instances=[i["InstanceId"] for r in reservations for i in r["Instances"]],
                 allocations=[a["AllocationId"] for a in addresses],
                 security_groups=[g["GroupId"] for g in groups],
                 key_pairs=[k["KeyName"] for k in keys])


def release_address(ec2, allocation_id: str) -> None:
    with cloud_errors.translated("aws", f"describing Elastic IP {allocation_id}"):
        found = ec2.describe_addresses(Filters=[{"Name": "allocation-id", "Values": [allocation_id]}])["Addresses"]
    for addr in found:
        if addr.get("AssociationId"):
            with cloud_errors.translated("aws", f"disassociating Elastic IP {addr.get('PublicIp')}"):
                ec2.disassociate_address(AssociationId=addr["AssociationId"])
        with cloud_errors.translated("aws", f"releasing Elastic IP {addr.get('PublicIp')}"):
            ec2.release_address(AllocationId=allocation_id)


def terminate_instance(ec2, instance_id: str, progress: Progress) -> None:
    try:
        with cloud_errors.translated("aws", f"terminating instance {instance_id}"):
            ec2.terminate_instances(InstanceIds=[instance_id])
    except errors.ProviderError as exc:
        if exc.code != "InvalidInstanceID.NotFound":
            raise
        return
    wait_instance(ec2, instance_id, "terminated", facts.INSTANCE_TERMINATED_TIMEOUT_S, progress)


def delete_security_group(ec2, sg_id: str, progress: Progress = lambda _line: None) -> None:
    """Delete a security group; while EC2 still counts the instance that just terminated as its
    user it answers DependencyViolation: retry then, for at most SG_IN_USE_TIMEOUT_S."""
    deadline = time.monotonic() + facts.SG_IN_USE_TIMEOUT_S
    sleeps = _sleeps()
    while True:
        try:
            with cloud_errors.translated("aws", f"deleting security group {sg_id}"):
                ec2.delete_security_group(GroupId=sg_id)
            return
        except errors.ProviderError as exc:
            if exc.code == "InvalidGroup.NotFound":
                return
            if exc.code != "DependencyViolation":
                raise
            if time.monotonic() > deadline:
                raise errors.ProviderError(
                    f"Security group {sg_id} is still in use after {facts.SG_IN_USE_TIMEOUT_S} s.",
                    hint="Something else uses it (see its network interfaces in the EC2 console); "
                         "`cloudmig host destroy` again removes it once it is free.",
                    code="DependencyViolation") from None
            progress(f"security group {sg_id} still in use (EC2 is letting the instance go); retrying")
            time.sleep(next(sleeps))


def delete_key_pair(ec2, key_name: str) -> None:
    with cloud_errors.translated("aws", f"deleting key pair {key_name}"):
        ec2.delete_key_pair(KeyName=key_name)   # EC2 answers success for a missing key pair


def delete_owned(ec2, owned: Owned, progress: Progress) -> None:
    """Remove in dependency order: addresses, instances (and wait), security groups, key pairs."""
    for alloc in owned.allocations:
        release_address(ec2, alloc)
        progress(f"released Elastic IP {alloc}")
    for inst in owned.instances:
        terminate_instance(ec2, inst, progress)
    for sg in owned.security_groups:
        delete_security_group(ec2, sg, progress)
        progress(f"deleted security group {sg}")
    for key in owned.key_pairs:
        delete_key_pair(ec2, key)
        progress(f"deleted key pair {key}")
