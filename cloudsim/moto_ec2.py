"""moto's EC2 server with two changes that make it behave as EC2 does for cloudmig:

- public addresses (instances' and Elastic IPs) come from CLOUDSIM_EC2_ADDRESSES (a CIDR inside
  198.18.0.0/15, default 198.19.0.0/16) instead of moto's real-looking public ranges;
- deleting a security group an instance still uses answers DependencyViolation, also for
  CLOUDSIM_EC2_SG_RELEASE_S seconds after that instance terminated (real EC2 does the same
  while it lets the instance's network interface go).

    python -m cloudsim.moto_ec2 -H 127.0.0.1 -p PORT      # moto.server's own arguments
"""

from __future__ import annotations

import os
import threading
import time

from cloudsim.addresses import DEFAULT_POOL, AddressPool

SG_RELEASE_S_DEFAULT = 2.0


def patch() -> None:
    from moto.ec2.exceptions import DependencyViolationError
    from moto.ec2.models import elastic_ip_addresses, elastic_network_interfaces, instances
    from moto.ec2.models.security_groups import SecurityGroupBackend

    pool = AddressPool(os.environ.get("CLOUDSIM_EC2_ADDRESSES", DEFAULT_POOL))
    elastic_network_interfaces.random_public_ip = pool.take
    elastic_ip_addresses.random_ip = pool.take

    release_s = float(os.environ.get("CLOUDSIM_EC2_SG_RELEASE_S", SG_RELEASE_S_DEFAULT))
    terminated_at: dict[str, float] = {}
    lock = threading.Lock()
    terminate = instances.Instance.terminate

    def terminate_and_remember(self):
        with lock:
            terminated_at.setdefault(self.id, time.monotonic())
        return terminate(self)

    instances.Instance.terminate = terminate_and_remember

    delete = SecurityGroupBackend._delete_security_group

    def delete_unless_used(self, vpc_id, group_id):
        now = time.monotonic()
        for inst in self.all_instances():
            groups = {g.id if hasattr(g, "id") else g for g in inst.security_groups}
            if group_id not in groups:
                continue
            gone_since = terminated_at.get(inst.id)
            if inst.state != "terminated" or (gone_since is not None and now - gone_since < release_s):
                raise DependencyViolationError(f"resource {group_id} has a dependent object")
        return delete(self, vpc_id, group_id)

    SecurityGroupBackend._delete_security_group = delete_unless_used


def main() -> None:
    patch()
    from moto.server import main as moto_main
    moto_main()


if __name__ == "__main__":
    main()
