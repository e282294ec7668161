"""The first-boot set-up of cloud hosts, from one source for every cloud.

    from cloudmig.providers import cloudinit
    boot = cloudinit.build(token="…", authorized_key="ssh-ed25519 AAAA… cloudmig")
    boot.to_cloud_config()     # '#cloud-config\\n…' — the aws user-data and azure custom data
    boot.files, boot.commands  # the same steps, for a machine without cloud-init (e.g. a lab host)
    cloudinit.user_data(token, authorized_key)   # shorthand for build(...).to_cloud_config()

What a host gets on first boot:

- ``/etc/cloudmig/agent.token`` (root, 0600): the token the controller presents to the agent;
- ``/root/.ssh/authorized_keys`` (0600): the controller's public key (the agent is started by
  the controller over SSH: ``ssh root@HOST cloudmig agent stdio --token-file /etc/cloudmig/agent.token``);
- ``/usr/local/sbin/cloudmig-bootstrap-host``: the project's ``scripts/bootstrap-host``, carried
  gzip+base64 (it is ~10 KiB; AWS refuses user-data over 16 KiB);
- ``/usr/local/sbin/cloudmig-firstboot``: runs the bootstrap, logs to
  ``/var/log/cloudmig-bootstrap.log``, keeps sshd enabled, and writes ``ok`` or ``failed`` to
  ``/var/lib/cloudmig/bootstrap.status`` — what the controller waits for before it adopts the host.

The token is part of the user-data, which the cloud shows to whoever may read the instance's
attributes and to processes on the VM (metadata service): it authenticates the agent channel,
which is only reachable through SSH with the controller's key.
"""

from __future__ import annotations

import base64
import dataclasses
import gzip
import os
import re
from pathlib import Path

import yaml

from cloudmig import errors

__all__ = ["build", "user_data", "check_size", "bootstrap_script", "HostBootstrap", "WriteFile",
           "AGENT_TOKEN_PATH", "BOOTSTRAP_STATUS_PATH", "USER_DATA_LIMIT_BYTES"]

AGENT_TOKEN_PATH = "/etc/cloudmig/agent.token"
AUTHORIZED_KEYS_PATH = "/root/.ssh/authorized_keys"
BOOTSTRAP_PATH = "/usr/local/sbin/cloudmig-bootstrap-host"
FIRSTBOOT_PATH = "/usr/local/sbin/cloudmig-firstboot"
BOOTSTRAP_LOG_PATH = "/var/log/cloudmig-bootstrap.log"
BOOTSTRAP_STATUS_PATH = "/var/lib/cloudmig/bootstrap.status"
USER_DATA_LIMIT_BYTES = 16 * 1024   # EC2 refuses larger user-data (before its base64 encoding)

_TOKEN_RE = re.compile(r"^[A-Za-z0-9_.~+/=-]{16,512}$")
_KEY_RE = re.compile(r"^(ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp(256|384|521)) [A-Za-z0-9+/=]+( [^\n]*)?$")

_FIRSTBOOT = f"""#!/bin/sh
# cloudmig first boot (generated): run the host bootstrap once, keep sshd reachable.
mkdir -p "$(dirname {BOOTSTRAP_STATUS_PATH})"
if {BOOTSTRAP_PATH} >{BOOTSTRAP_LOG_PATH} 2>&1; then status=ok; else status=failed; fi
# The bootstrap stops a freshly installed sshd (right on lab machines); cloud hosts are
# reached over SSH, so it is switched back on here.
systemctl enable --now ssh >/dev/null 2>&1 || true
echo "$status" > {BOOTSTRAP_STATUS_PATH}
"""


@dataclasses.dataclass(frozen=True)
class WriteFile:
    path: str
    content: bytes
    mode: int          # e.g. 0o600

    def to_cloud_config(self) -> dict:
        packed = base64.b64encode(gzip.compress(self.content, mtime=0)).decode()
        return {"path": self.path, "owner": "root:root", "permissions": f"{self.mode:04o}",
                "encoding": "gz+b64", "content": packed}


@dataclasses.dataclass(frozen=True)
class HostBootstrap:
    """Files to write (in order) and commands to run (in order) on a host's first boot."""
    files: list[WriteFile]
    commands: list[list[str]]

    def to_cloud_config(self) -> str:
        doc = {
            # root logs in with the controller's key only (no passwords; see authorized_keys)
            "disable_root": False,
            "ssh_pwauth": False,
            "write_files": [f.to_cloud_config() for f in self.files],
            "runcmd": self.commands,
        }
        return "#cloud-config\n" + yaml.safe_dump(doc, sort_keys=False, width=1 << 20)


def bootstrap_script() -> Path:
    """The project's host bootstrap: $CLOUDMIG_BOOTSTRAP_SCRIPT or scripts/bootstrap-host of the source tree."""
    env = os.environ.get("CLOUDMIG_BOOTSTRAP_SCRIPT")
    candidates = [Path(env)] if env else [Path(__file__).resolve().parent.parent / "scripts" / "bootstrap-host"]
    for path in candidates:
        if path.is_file():
            return path
    raise errors.ConfigError(f"The host bootstrap script was not found (looked at {candidates[0]}).",
                             hint="Set CLOUDMIG_BOOTSTRAP_SCRIPT to the path of scripts/bootstrap-host.")


def build(token: str, authorized_key: str, *, script: Path | None = None) -> HostBootstrap:
    """The first-boot steps that give a host the agent ``token`` and trust ``authorized_key``."""
    if not _TOKEN_RE.match(token):
        raise errors.ConfigError("The agent token must be 16 to 512 URL-safe characters on one line.")
    key = authorized_key.strip()
    if not _KEY_RE.match(key):
        raise errors.ConfigError("The SSH public key must be one OpenSSH line (ssh-ed25519 AAAA… comment).")
    script_bytes = (script or bootstrap_script()).read_bytes()
    files = [
        WriteFile(AGENT_TOKEN_PATH, token.encode(), 0o600),
        WriteFile(AUTHORIZED_KEYS_PATH, (key + "\n").encode(), 0o600),
        WriteFile(BOOTSTRAP_PATH, script_bytes, 0o755),
        WriteFile(FIRSTBOOT_PATH, _FIRSTBOOT.encode(), 0o755),
    ]
    return HostBootstrap(files=files, commands=[[FIRSTBOOT_PATH]])


def check_size(data: str) -> str:
    """``data`` if it fits EC2's user-data limit, else a ConfigError."""
    size = len(data.encode())
    if size > USER_DATA_LIMIT_BYTES:
        raise errors.ConfigError(f"The host's user-data is {size} bytes; clouds accept at most "
                                 f"{USER_DATA_LIMIT_BYTES} (EC2).",
                                 hint="Shorten scripts/bootstrap-host or the user-data given.")
    return data


def user_data(token: str, authorized_key: str, *, script: Path | None = None) -> str:
    """The cloud-init user-data (a ``#cloud-config`` document) for one host, size-checked."""
    return check_size(build(token, authorized_key, script=script).to_cloud_config())
