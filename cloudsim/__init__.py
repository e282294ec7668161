"""A cloud simulator for tests and examples: the clouds' control planes, never cloudmig's code.

- ``cloudsim.moto_ec2``: moto's EC2 server, changed where it differs from EC2 in ways cloudmig
  must cope with (public addresses from the lab's range; DependencyViolation while a
  terminated instance still holds its security group);
- ``cloudsim.machines``: each instance / VM booted as a lab network namespace that runs the
  instance's real user-data (sshd with the host key it carries, the bootstrap, the agent) at
  the instance's public address.

The provider code under test stays the real boto3 / azure-mgmt code talking HTTP to these
control planes. Every simulated public address lies in 198.18.0.0/15 (RFC 2544, routed nowhere).
"""
