"""The aws provider: hosts as EC2 instances (boto3, imported only when a verb runs).

    from cloudmig.providers import HostSpec, load
    aws = load("aws")
    rec = aws.create_host(HostSpec(name="web1", provider="aws", operator_cidr="203.0.113.7/32",
                                   options={"region": "eu-west-1", "elastic_ip": "true"}), print)
    aws.destroy_host(rec, print)

Credentials, region and endpoint come from boto3's standard chain (AWS_PROFILE, AWS_REGION,
AWS_ENDPOINT_URL, ...). What gets created, how it is tagged and how destroy finds it:
docs/providers.md.
"""

from __future__ import annotations

import logging
import os

from cloudmig import errors
from cloudmig.inventory import HostRecord, Inventory
from cloudmig.providers import HostSpec, Progress, _no_progress, cloud_errors, cloud_host
from cloudmig.providers.aws import facts

__all__ = ["AwsProvider"]

log = logging.getLogger(__name__)


class AwsProvider:
    name = "aws"
    capabilities = frozenset({"create", "destroy", "elastic-ip", "tunnel-firewall"})
    option_help = facts.OPTION_HELP

    def __init__(self, inventory: Inventory | None = None) -> None:
        self.inv = inventory or Inventory()

    # ------------------------------------------------------------------ provider verbs
    def plan_create(self, spec: HostSpec) -> list[str]:
        checked = cloud_host.check_spec(self.name, spec, self.option_help, facts.option_checks())
        opts = checked.options
        region = opts.get("region") or "(region from AWS_REGION / the profile)"
        itype = opts.get("instance_type", facts.DEFAULT_INSTANCE_TYPE)
        image = opts.get("image") or f"newest {facts.DEBIAN_IMAGE_NAME.format(arch='<arch>')} " \
                                     f"from owner {facts.DEBIAN_OWNER_ID}"
        name = f"cloudmig-{spec.name}"
        lines = [f"region {region}",
                 f"key pair {name} (ed25519, imported; private key stays in cloudmig's state dir)",
                 f"security group {name} in the default VPC: {checked.firewall_line()}",
                 f"instance {itype}, image {image}, cloud-init user-data running cloudmig/bootstrap-host"]
        if cloud_host.flag(opts, "elastic_ip"):
            lines.append("Elastic IP, associated with the instance")
        lines.append(cloud_host.tags_line(spec.name))
        return lines + ([checked.warning] if checked.warning else [])

    def create_host(self, spec: HostSpec, progress: Progress = _no_progress) -> HostRecord:
        from cloudmig.providers.aws import ec2 as ec2_ops

        checked = cloud_host.check_spec(self.name, spec, self.option_help, facts.option_checks())
        opts = checked.options
        itype = opts.get("instance_type", facts.DEFAULT_INSTANCE_TYPE)
        ec2 = self._client(opts.get("region"))
        region = ec2.meta.region_name
        # preflight: everything that can be refused is asked before anything is made
        arch = ec2_ops.instance_architecture(ec2, itype)
        image = ec2_ops.get_image(ec2, opts["image"], arch) if opts.get("image") else ec2_ops.find_debian_image(ec2, arch)
        vpc = ec2_ops.default_vpc(ec2)
        progress(f"{spec.name}: {itype} ({arch}) in {region}, image {image['ImageId']} ({image.get('Name', '?')})")
        if checked.warning:
            progress(checked.warning)

        record = cloud_host.reserve(self.inv, spec, {**opts, "region": region})
        try:
            access = cloud_host.prepare_access(spec)
            user_data = cloud_host.user_data_for(spec, access)
            with cloud_host.Rollback(progress) as undo:
                key = ec2_ops.import_key_pair(ec2, spec.name, access.public_key)
                undo.push(f"key pair {key}", lambda: ec2_ops.delete_key_pair(ec2, key))
                progress(f"key pair {key}")
                sg = ec2_ops.create_security_group(ec2, spec.name, vpc, checked.operator_cidr, checked.peers,
                                                   checked.wg_port)
                undo.push(f"security group {sg}", lambda: ec2_ops.delete_security_group(ec2, sg, progress))
                progress(f"security group {sg}: {checked.firewall_line()}")
                inst = ec2_ops.run_instance(ec2, spec.name, image["ImageId"], itype, key, sg, user_data)
                undo.push(f"instance {inst}", lambda: ec2_ops.terminate_instance(ec2, inst, progress))
                info = ec2_ops.wait_instance(ec2, inst, "running", facts.INSTANCE_RUNNING_TIMEOUT_S, progress)
                address = (info or {}).get("PublicIpAddress")
                resources = {"region": region, "instance_id": inst, "security_group_id": sg, "key_pair": key,
                             "image_id": image["ImageId"]}
                if cloud_host.flag(opts, "elastic_ip"):
                    alloc, address = ec2_ops.allocate_address(ec2, spec.name, inst)
                    undo.push(f"Elastic IP {alloc}", lambda: ec2_ops.release_address(ec2, alloc))
                    resources["allocation_id"] = alloc
                    progress(f"Elastic IP {address}")
                if not address:
                    raise errors.ProviderError(f"Instance {inst} has no public address.",
                                               hint="Use --option elastic_ip=true, or a default VPC whose "
                                                    "subnets assign public IPs.")
        except BaseException:
            cloud_host.forget_host(self.inv, spec.name)
            raise
        cloud_host.mark_running(self.inv, record, address, resources, access)
        progress(f"{spec.name}: instance {inst} running at {address}; cloud-init is bootstrapping it")
        return record

    def describe_host(self, record: HostRecord) -> HostRecord:
        from cloudmig.providers.aws import ec2 as ec2_ops

        copy = record.model_copy(deep=True)
        inst_id = record.resources.get("instance_id")
        ec2 = self._client(record.resources.get("region") or record.options.get("region"))
        info = ec2_ops.describe_instance(ec2, inst_id) if inst_id else None
        state = info["State"]["Name"] if info else "terminated"
        copy.state = facts.HOST_STATES.get(state, "error")
        if info and not record.resources.get("allocation_id"):
            copy.public_address = info.get("PublicIpAddress") or copy.public_address
        return copy

    def list_hosts(self) -> list[HostRecord]:
        """Instances tagged cloudmig:managed=true in the configured region."""
        ec2 = self._client(None)
        flt = [{"Name": f"tag:{cloud_host.TAG_MANAGED}", "Values": ["true"]}]
        with cloud_errors.translated("aws", "listing cloudmig's instances"):
            reservations = ec2.describe_instances(Filters=flt)["Reservations"]
        hosts = []
        for inst in (i for r in reservations for i in r["Instances"]):
            tags = {t["Key"]: t["Value"] for t in inst.get("Tags", [])}
            if inst["State"]["Name"] == "terminated" or cloud_host.TAG_HOST not in tags:
                continue
            hosts.append(HostRecord(name=tags[cloud_host.TAG_HOST], provider=self.name, transport="ssh",
                                    public_address=inst.get("PublicIpAddress"),
                                    state=facts.HOST_STATES.get(inst["State"]["Name"], "error"),
                                    resources={"region": ec2.meta.region_name, "instance_id": inst["InstanceId"]}))
        return hosts

    def destroy_host(self, record: HostRecord, progress: Progress = _no_progress) -> None:
        """Remove the host's resources, found by its ownership tags plus the ids recorded."""
        from cloudmig.providers.aws import ec2 as ec2_ops

        ec2 = self._client(record.resources.get("region") or record.options.get("region"))
        owned = ec2_ops.find_owned(ec2, record.name)
        # ids recorded at create time are included even if their tags were edited away
        inst = record.resources.get("instance_id")
        if inst and inst not in owned.instances:
            info = ec2_ops.describe_instance(ec2, inst)
            if info and info["State"]["Name"] != "terminated":
                owned.instances.append(inst)
        if owned.empty():
            progress(f"{record.name}: nothing left in {ec2.meta.region_name}")
        else:
            ec2_ops.delete_owned(ec2, owned, progress)
        cloud_host.forget_host(self.inv, record.name)
        progress(f"{record.name}: destroyed")

    def allow_tunnel_peer(self, record: HostRecord, peer_address: str, port: int) -> None:
        from cloudmig.providers.aws import ec2 as ec2_ops

        sg = record.resources.get("security_group_id")
        if not sg:
            raise errors.ProviderError(f"Host {record.name} has no security group recorded.",
                                       hint="Recreate it with `cloudmig host create`.")
        ec2_ops.allow_udp(self._client(record.resources.get("region")), sg, cloud_host.peer_cidr(peer_address), port)

    def revoke_tunnel_peer(self, record: HostRecord, peer_address: str, port: int) -> None:
        from cloudmig.providers.aws import ec2 as ec2_ops

        sg = record.resources.get("security_group_id")
        if sg:
            ec2_ops.revoke_udp(self._client(record.resources.get("region")), sg, cloud_host.peer_cidr(peer_address),
                               port)

    # ------------------------------------------------------------------ helpers
    def _client(self, region: str | None):
        """An EC2 client from boto3's standard chain; ``region`` overrides the chain's region."""
        try:
            import boto3
        except ImportError:
            raise errors.ConfigError("The aws provider needs boto3.",
                                     hint="Install it: pip install 'cloudmig[aws]'.") from None
        with cloud_errors.translated("aws", "reading the AWS configuration"):
            # boto3 itself reads AWS_DEFAULT_REGION and the profile; AWS_REGION (what the other
            # AWS SDKs and tools read) is honoured first, as users expect it to be.
            session = boto3.session.Session(region_name=region or os.environ.get("AWS_REGION") or None)
            if not session.region_name:
                raise errors.ConfigError("No AWS region is configured.",
                                         hint="Set AWS_REGION, a region in the AWS profile, or --option region=....")
            return session.client("ec2")

