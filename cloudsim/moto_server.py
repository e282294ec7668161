"""moto's EC2 in server mode, as a real HTTP server on 127.0.0.1, with its validations on.

It runs as the cloud simulator's EC2 (cloudsim.moto_ec2): public addresses from the lab's
range (198.18.0.0/15), and DependencyViolation while a security group's instance is going.

    server = MotoServer.start(tmp_path)      # AMI, instance-type and key-pair validation on,
    server.env                               # every request signed by a real IAM access key
    server.stop()

The only images are Debian 12 amd64 ones (owner 136693071363), written to the file
MOTO_AMIS_PATH names, so the provider's owner/name lookup runs as it would against EC2 (and
finds nothing for arm64 instance types).
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
START_TIMEOUT_S = 30
REGION = "us-east-1"
DEBIAN_OWNER = "136693071363"
# The first N signed-or-not requests are free; IAM set-up below uses exactly these 3, after
# which moto checks every request's signature against the IAM access keys it knows.
FREE_SETUP_ACTIONS = 3

DEBIAN_AMIS = [
    {"ami_id": "ami-0deb12a0000000001", "name": "debian-12-amd64-20240101-1614", "architecture": "x86_64",
     "creation_date": "2024-01-01T10:00:00.000Z"},
    {"ami_id": "ami-0deb12a0000000002", "name": "debian-12-amd64-20240601-1770", "architecture": "x86_64",
     "creation_date": "2024-06-01T10:00:00.000Z"},
    # the simulator boots this one as plain Debian (no CRIU, no cloudmig): cloudsim.hypervisor
    {"ami_id": "ami-0deb12a0000000003", "name": "debian-12-amd64-20230101-1400", "architecture": "x86_64",
     "creation_date": "2023-01-01T10:00:00.000Z"},
    # ... and this one as an image that never gets as far as sshd
    {"ami_id": "ami-0deb12a0000000004", "name": "debian-12-amd64-20221201-1300", "architecture": "x86_64",
     "creation_date": "2022-12-01T10:00:00.000Z"},
]
NEWEST_AMD64 = "ami-0deb12a0000000002"
BARE_AMD64 = "ami-0deb12a0000000003"
HANGING_AMD64 = "ami-0deb12a0000000004"


def _ami(entry: dict) -> dict:
    return {**entry, "state": "available", "public": True, "owner_id": DEBIAN_OWNER,
            "image_location": f"{DEBIAN_OWNER}/{entry['name']}", "sriov": "simple",
            "root_device_type": "ebs", "root_device_name": "/dev/xvda",
            "description": f"Debian 12 ({entry['name']})", "image_type": "machine", "platform": None,
            "virtualization_type": "hvm", "hypervisor": "xen"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclasses.dataclass
class MotoServer:
    proc: subprocess.Popen
    url: str
    access_key: str = ""
    secret_key: str = ""

    @property
    def env(self) -> dict[str, str]:
        """boto3's standard chain pointed at this server (and nothing else)."""
        return {"AWS_ENDPOINT_URL": self.url, "AWS_REGION": REGION, "AWS_ACCESS_KEY_ID": self.access_key,
                "AWS_SECRET_ACCESS_KEY": self.secret_key, "AWS_CONFIG_FILE": "/nonexistent",
                "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent", "AWS_EC2_METADATA_DISABLED": "true"}

    @classmethod
    def start(cls, workdir: Path, addresses: str | None = None) -> "MotoServer":
        amis = workdir / "amis.json"
        amis.write_text(json.dumps([_ami(a) for a in DEBIAN_AMIS]))
        port = _free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MOTO_"))}
        env.update({"MOTO_AMIS_PATH": str(amis), "MOTO_ENABLE_AMI_VALIDATION": "true",
                    "MOTO_EC2_ENABLE_INSTANCE_TYPE_VALIDATION": "true",
                    "MOTO_ENABLE_KEYPAIR_VALIDATION": "true",
                    "INITIAL_NO_AUTH_ACTION_COUNT": str(FREE_SETUP_ACTIONS),
                    "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))})
        if addresses:
            env["CLOUDSIM_EC2_ADDRESSES"] = addresses
        log = open(workdir / "moto.log", "wb")
        proc = subprocess.Popen([sys.executable, "-m", "cloudsim.moto_ec2", "-H", "127.0.0.1", "-p", str(port)],
                                stdout=log, stderr=log, env=env)
        server = cls(proc=proc, url=f"http://127.0.0.1:{port}")
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    server.stop()
                    raise RuntimeError(f"moto_server did not start: {(workdir / 'moto.log').read_text()}")
                time.sleep(0.1)
        server._make_user()
        return server

    def _make_user(self) -> None:
        import boto3
        iam = boto3.client("iam", endpoint_url=self.url, region_name=REGION,
                           aws_access_key_id="setup", aws_secret_access_key="setup")
        iam.create_user(UserName="cloudmig-test")
        iam.put_user_policy(UserName="cloudmig-test", PolicyName="all", PolicyDocument=json.dumps({
            "Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}))
        key = iam.create_access_key(UserName="cloudmig-test")["AccessKey"]
        self.access_key, self.secret_key = key["AccessKeyId"], key["SecretAccessKey"]

    def ec2(self):
        import boto3
        return boto3.client("ec2", endpoint_url=self.url, region_name=REGION,
                            aws_access_key_id=self.access_key, aws_secret_access_key=self.secret_key)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
