"""Stateless facts about AWS that the aws provider relies on (no SDK, no network).

    from cloudmig.providers.aws import facts
    facts.DEBIAN_OWNER_ID                               # who publishes Debian's official AMIs
    facts.DEBIAN_IMAGE_NAME.format(arch="amd64")        # 'debian-12-amd64-*'
"""

from __future__ import annotations

# Debian's cloud team publishes the official AMIs from this account, named
# debian-12-<arch>-<YYYYMMDD>-<build> (arch: amd64 | arm64).
DEBIAN_OWNER_ID = "136693071363"
DEBIAN_IMAGE_NAME = "debian-12-{arch}-*"
DEBIAN_ARCH_NAMES = {"x86_64": "amd64", "arm64": "arm64"}

DEFAULT_INSTANCE_TYPE = "t3.small"     # 2 vCPU, 2 GiB: enough for CRIU builds and small containers
INSTANCE_RUNNING_TIMEOUT_S = 600       # 10 minutes from RunInstances to "running"
INSTANCE_TERMINATED_TIMEOUT_S = 600    # security groups can only go once the instance is gone
POLL_INTERVALS_S = (0.2, 0.5, 1, 2, 5)  # then 5 s between polls
SG_IN_USE_TIMEOUT_S = 300              # EC2 answers DependencyViolation for a while after a terminate

# EC2 instance state -> cloudmig host state ("running" = the VM is up; the agent may still be
# bootstrapping, see docs/providers.md)
HOST_STATES = {"pending": "pending", "running": "running", "stopping": "stopped", "stopped": "stopped",
               "shutting-down": "gone", "terminated": "gone"}

OPTION_HELP = {
    "region": "AWS region (default: boto3's chain, e.g. AWS_REGION or the profile's region)",
    "instance_type": f"EC2 instance type (default {DEFAULT_INSTANCE_TYPE})",
    "image": "AMI id (default: newest official Debian 12 image for the instance type's architecture)",
    "elastic_ip": "true: give the host an Elastic IP (default false: the instance's public IP)",
    "wg_port": "WireGuard UDP port opened to tunnel peers (default 51820)",
}



def option_checks() -> dict:
    """How each option's value is checked before anything is made (cloud_host.check_spec)."""
    from cloudmig.providers import cloud_host
    return {"region": cloud_host.check_pattern(r"[a-z]{2}(-[a-z]+)+-\d", "eu-west-1"),
            "instance_type": cloud_host.check_pattern(r"[a-z][a-z0-9-]*\.[a-z0-9-]+", DEFAULT_INSTANCE_TYPE),
            "image": cloud_host.check_pattern(r"ami-[0-9a-f]{8,17}", "ami-0123456789abcdef0"),
            "elastic_ip": cloud_host.check_flag}
