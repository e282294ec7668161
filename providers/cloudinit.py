"""The first-boot set-up of cloud hosts, from one source for every cloud.

    from cloudmig.providers import cloudinit
    boot = cloudinit.build(token="…", authorized_key="ssh-ed25519 AAAA… cloudmig", host="web1")
    boot.to_cloud_config()     # '#cloud-config\\n…': what cloud-init reads
    boot.files, boot.commands  # the same steps, for a machine without cloud-init (e.g. a lab host)
    cloudinit.user_data(token, authorized_key, host="web1")   # that document gzipped, size-checked:
                                                              # the aws user-data and azure custom data

What a host gets on first boot (paths are ``BootPaths`` and the ssh provider's ``AgentLayout``
defaults; tests relocate them):

- ``/var/lib/cloudmig-agent/agent.token`` (root, 0600): the token the controller presents to the agent;
- ``/root/.ssh/authorized_keys`` (0600): the controller's public key;
- ``/usr/local/sbin/cloudmig-bootstrap-host``: the project's ``cloudmig/bootstrap-host`` without
  its comment lines (its here-documents whole), as text (~41 KiB; ~27 KiB more with the
  comments); the whole user-data is gzipped (15,480 bytes as of 2026-12-01, nearly all of it
  the script and its CRIU patch: AWS refuses more than 16 KiB, and ``check_size`` says so);
- ``/usr/local/sbin/cloudmig-agent-start``: starts the agent daemon on its root-only socket
  (a systemd unit where systemd runs) — the same script SSH adoption runs;
- ``/usr/local/sbin/cloudmig-firstboot``: runs the bootstrap with ``--keep-ssh`` (and with
  ``--venv``/``--project`` when the image carries cloudmig's source at ``BootPaths.project``),
  logs to ``/var/log/cloudmig-bootstrap.log``, then starts the agent if cloudmig is installed,
  and writes ``ok``, ``failed`` or ``agent-failed`` to ``/var/lib/cloudmig/bootstrap.status``.
  Without cloudmig on the image, the controller installs it over SSH
  (``cloudmig host add``), which starts the same agent.

The token is part of the user-data, which the cloud shows to whoever may read the instance's
attributes and to processes on the VM (metadata service): it authenticates the agent channel,
which is only reachable through SSH with the controller's key.
"""

from __future__ import annotations

import base64
import dataclasses
import gzip
import re
import shlex
from pathlib import Path

import yaml

from cloudmig import distribution, errors
from cloudmig.providers.ssh.remote import AgentLayout

__all__ = ["build", "user_data", "check_size", "HostBootstrap", "HostKey", "WriteFile", "BootPaths",
           "AGENT_TOKEN_PATH", "BOOTSTRAP_STATUS_PATH", "USER_DATA_LIMIT_BYTES"]


@dataclasses.dataclass(frozen=True)
class BootPaths:
    """Where first boot puts its files (the agent's own are in ``AgentLayout``)."""
    authorized_keys: str = "/root/.ssh/authorized_keys"
    bootstrap: str = "/usr/local/sbin/cloudmig-bootstrap-host"
    agent_start: str = "/usr/local/sbin/cloudmig-agent-start"
    firstboot: str = "/usr/local/sbin/cloudmig-firstboot"
    log: str = "/var/log/cloudmig-bootstrap.log"
    status: str = "/var/lib/cloudmig/bootstrap.status"
    project: str = "/opt/cloudmig/src/current"     # cloudmig's source, if the image carries it


AGENT_TOKEN_PATH = AgentLayout(host="-").token_file
AUTHORIZED_KEYS_PATH = BootPaths.authorized_keys
BOOTSTRAP_PATH = BootPaths.bootstrap
FIRSTBOOT_PATH = BootPaths.firstboot
BOOTSTRAP_STATUS_PATH = BootPaths.status
USER_DATA_LIMIT_BYTES = 16 * 1024   # EC2 refuses larger user-data (before its base64 encoding)
GZIP_MAGIC = b"\x1f\x8b"

_TOKEN_RE = re.compile(r"^[A-Za-z0-9_.~+/=-]{16,512}$")
_HEREDOC_RE = re.compile(rb"(?<!<)<<(?!<)-?\s*(['\"]?)([A-Za-z_][A-Za-z0-9_]*)\1")   # not <<< (a here-string)
_KEY_RE = re.compile(r"^(ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp(256|384|521)) [A-Za-z0-9+/=]+( [^\n]*)?$")



def _firstboot(boot: BootPaths, layout: AgentLayout) -> str:
    q = shlex.quote
    return f"""#!/bin/sh
# cloudmig first boot (generated): bootstrap the host (sshd kept on: the controller comes
# over SSH), then start the agent daemon if cloudmig is installed.
mkdir -p "$(dirname {q(boot.status)})" "$(dirname {q(boot.log)})"
set -- --keep-ssh
if [ -f {q(boot.project)}/pyproject.toml ]; then set -- "$@" --venv {q(layout.venv)} --project {q(boot.project)}; fi
if {q(boot.bootstrap)} "$@" >{q(boot.log)} 2>&1; then status=ok; else status=failed; fi
if [ $status = ok ] && [ -x {q(layout.cloudmig)} ]; then
  {q(boot.agent_start)} >>{q(boot.log)} 2>&1 || status=agent-failed
elif [ $status = ok ]; then
  echo "no cloudmig at {layout.venv}: the controller installs it over SSH (cloudmig host add)" >>{q(boot.log)}
fi
echo "$status" > {q(boot.status)}
"""


@dataclasses.dataclass(frozen=True)
class WriteFile:
    path: str
    content: bytes
    mode: int          # e.g. 0o600

    def to_cloud_config(self) -> dict:
        """Text goes in as it is: the whole user-data is gzipped (``pack``), which packs it
        once. Gzipped and base64-encoded here as well, the bootstrap script packed ~420 bytes
        worse (its base64 text compresses to ~3/4, not to what gzip made of the script)."""
        entry = {"path": self.path, "owner": "root:root", "permissions": f"{self.mode:04o}"}
        try:
            return {**entry, "content": self.content.decode("utf-8")}
        except UnicodeDecodeError:
            return {**entry, "encoding": "gz+b64",
                    "content": base64.b64encode(gzip.compress(self.content, mtime=0)).decode()}


@dataclasses.dataclass(frozen=True)
class HostKey:
    """The host's SSH key, made by the controller: known before first contact (no trust on
    first use). ``public`` is the OpenSSH line the controller pins."""
    private: str
    public: str


@dataclasses.dataclass(frozen=True)
class HostBootstrap:
    """Files to write (in order) and commands to run (in order) on a host's first boot."""
    files: list[WriteFile]
    commands: list[list[str]]
    host_key: HostKey | None = None

    def to_cloud_config(self) -> str:
        doc: dict = {
            # root logs in with the controller's key only (no passwords; see authorized_keys)
            "disable_root": False,
            "ssh_pwauth": False,
        }
        if self.host_key:
            # cloud-init's ssh_keys: sshd gets this key instead of keys it would generate
            doc.update({"ssh_deletekeys": True, "ssh_genkeytypes": [],
                        "ssh_keys": {"ed25519_private": self.host_key.private,
                                     "ed25519_public": self.host_key.public}})
        doc.update({"write_files": [f.to_cloud_config() for f in self.files], "runcmd": self.commands})
        return "#cloud-config\n" + yaml.safe_dump(doc, sort_keys=False, width=1 << 20)


def build(token: str, authorized_key: str, *, host: str = "host", script: Path | None = None,
          boot: BootPaths = BootPaths(), layout: AgentLayout | None = None,
          host_key: HostKey | None = None) -> HostBootstrap:
    """The first-boot steps that give a host the agent ``token``, trust ``authorized_key`` and start the agent."""
    if not _TOKEN_RE.match(token):
        raise errors.ConfigError("The agent token must be 16 to 512 URL-safe characters on one line.")
    key = authorized_key.strip()
    if not _KEY_RE.match(key):
        raise errors.ConfigError("The SSH public key must be one OpenSSH line (ssh-ed25519 AAAA… comment).")
    layout = layout or AgentLayout(host=host)
    script_bytes = without_comments((script or distribution.bootstrap_script()).read_bytes())
    files = [
        WriteFile(layout.token_file, token.encode(), 0o600),
        WriteFile(boot.authorized_keys, (key + "\n").encode(), 0o600),
        WriteFile(boot.bootstrap, script_bytes, 0o755),
        WriteFile(boot.agent_start, ("#!/bin/sh\n" + layout.start_script("auto")).encode(), 0o755),
        WriteFile(boot.firstboot, _firstboot(boot, layout).encode(), 0o755),
    ]
    return HostBootstrap(files=files, commands=[[boot.firstboot]], host_key=host_key)


def without_comments(script: bytes) -> bytes:
    """A shell script without its comment-only and blank lines (the first line, the ``#!``,
    stays; so does every line of a here-document, such as the CRIU patch the bootstrap
    carries, whose lines may start with ``#``). The comments are the repository's
    documentation; on a host they only cost user-data bytes."""
    out, end = [], None
    for number, line in enumerate(script.splitlines(keepends=True)):
        if end is not None:                  # inside a here-document: as it is
            out.append(line)
            if line.strip() == end:
                end = None
            continue
        if number and (not line.strip() or line.lstrip().startswith(b"#")):
            continue
        out.append(line)
        here = _HEREDOC_RE.search(line)
        if here:
            end = here.group(2)
    return b"".join(out)


def pack(document: str) -> bytes:
    """The document gzipped: cloud-init recognizes gzip's magic and unpacks it first. The
    files inside are text (``WriteFile``), so this is the one compression they get."""
    return gzip.compress(document.encode(), mtime=0)


def unpack(data: str | bytes) -> str:
    """User-data as cloud-init reads it: gunzipped if it is gzip, as text."""
    raw = data.encode() if isinstance(data, str) else data
    return (gzip.decompress(raw) if raw[:2] == GZIP_MAGIC else raw).decode()


def check_size(data: str | bytes) -> str | bytes:
    """``data`` if it fits EC2's user-data limit, else a ConfigError."""
    size = len(data.encode() if isinstance(data, str) else data)
    if size > USER_DATA_LIMIT_BYTES:
        raise errors.ConfigError(f"The host's user-data is {size} bytes; clouds accept at most "
                                 f"{USER_DATA_LIMIT_BYTES} (EC2).",
                                 hint="Shorten cloudmig/bootstrap-host or the user-data given.")
    return data


def user_data(token: str, authorized_key: str, *, host: str = "host", script: Path | None = None,
              host_key: HostKey | None = None) -> bytes:
    """The cloud-init user-data (a ``#cloud-config`` document, gzipped) for one host, size-checked."""
    return check_size(pack(build(token, authorized_key, host=host, script=script,
                                 host_key=host_key).to_cloud_config()))
