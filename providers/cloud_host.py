"""What the cloud providers (aws, azure) share: options, access material, tags, rollback, inventory.

    from cloudmig.providers import cloud_host
    opts = cloud_host.parse_options("aws", spec.options, AWS_OPTION_HELP)
    access = cloud_host.prepare_access(spec)             # token + ed25519 key, 0600 files
    tags = cloud_host.ownership_tags(spec.name)          # {"cloudmig:host": "h3", "cloudmig:managed": "true"}
    with cloud_host.Rollback(progress) as undo:
        sg = make_sg(); undo.push(f"security group {sg}", lambda: delete_sg(sg))
        ...                                               # an exception undoes everything, newest first
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
import re
import secrets
import shutil
import time
from pathlib import Path
from typing import Callable

from cloudmig import errors, paths
from cloudmig.inventory import HostRecord, Inventory
from cloudmig.providers import HostSpec, Progress, cloudinit
from cloudmig.providers.ssh.remote import AgentLayout

log = logging.getLogger(__name__)

__all__ = ["TAG_HOST", "TAG_MANAGED", "WIREGUARD_PORT", "SSH_PORT", "ownership_tags", "check_name",
           "parse_options", "flag", "check_flag", "check_pattern", "CheckedSpec", "check_spec",
           "operator_network", "open_ssh_warning", "tags_line", "wireguard_port", "check_network_spec", "peer_cidr",
           "HostAccess", "prepare_access", "user_data_for", "forget_access", "Rollback",
           "reserve", "save", "forget", "forget_host", "mark_running"]

TAG_HOST = "cloudmig:host"
TAG_MANAGED = "cloudmig:managed"
WIREGUARD_PORT = 51820      # UDP, opened only to tunnel peers
SSH_PORT = 22               # TCP, opened only to the operator
SSH_USER = "root"           # cloud-init authorizes the controller's key for root
_NAME_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789-"
MAX_NAME_LEN = 40           # fits every resource name derived from it on both clouds


def ownership_tags(name: str) -> dict[str, str]:
    """The tags every cloud resource of host ``name`` carries; destroy and list find them by these."""
    return {TAG_HOST: name, TAG_MANAGED: "true"}


def check_name(provider: str, name: str) -> None:
    if not name or len(name) > MAX_NAME_LEN or name[0] == "-" or any(c not in _NAME_CHARS for c in name):
        raise errors.ConfigError(f"{provider} host names use a-z, 0-9 and '-', at most {MAX_NAME_LEN} "
                                 f"characters, not starting with '-'; {name!r} does not.")


def parse_options(provider: str, options: dict[str, str], known: dict[str, str]) -> dict[str, str]:
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise errors.ConfigError(f"Unknown {provider} option(s): {', '.join(unknown)}.",
                                 hint=f"Known options: {', '.join(sorted(known))}.")
    return dict(options)


def flag(options: dict[str, str], key: str) -> bool:
    value = options.get(key, "false").strip().lower()
    if value not in ("true", "false", "yes", "no", "1", "0"):
        raise errors.ConfigError(f"Option {key} is true or false, not {value!r}.")
    return value in ("true", "yes", "1")


def wireguard_port(options: dict[str, str]) -> int:
    raw = options.get("wg_port", str(WIREGUARD_PORT))
    if not raw.isdigit() or not 1 <= int(raw) <= 65535:
        raise errors.ConfigError(f"wg_port must be a UDP port number (1-65535), not {raw!r}.")
    return int(raw)


def operator_network(cidr: str | None, name: str, allow_anywhere: bool = False) -> str:
    """The operator's CIDR (the only SSH source), checked: IPv4 or IPv6, no host bits, and not
    the whole internet unless ``allow_anywhere``."""
    if not cidr:
        raise errors.ConfigError(
            f"Host {name} needs the operator's address: SSH is opened only to it.",
            hint="Pass --operator-cidr with your public address, e.g. --operator-cidr 203.0.113.7/32.")
    try:
        net = ipaddress.ip_network(cidr.strip(), strict=False)
    except ValueError:
        raise errors.ConfigError(f"--operator-cidr {cidr!r} is not an IPv4 or IPv6 address or CIDR.") from None
    if net.network_address != ipaddress.ip_interface(cidr.strip()).ip:
        # 203.0.113.7/24 would open the whole /24: say which of the two was meant
        single = f"{ipaddress.ip_interface(cidr.strip()).ip}/{net.max_prefixlen}"
        raise errors.ConfigError(f"--operator-cidr {cidr} has host bits set: it names {net}, a whole network.",
                                 hint=f"Give {single} for this one address, or {net} if the whole network "
                                      f"is meant.")
    if net.prefixlen == 0 and not allow_anywhere:
        raise errors.ConfigError(f"--operator-cidr {net} would open SSH to the whole internet.",
                                 hint="Give your own public address (e.g. 203.0.113.7/32); if you really want "
                                      "SSH open to everyone, add --allow-ssh-from-anywhere.")
    return str(net)


def open_ssh_warning(operator: str) -> str | None:
    """A loud line when SSH is opened to every address (asked for explicitly)."""
    if ipaddress.ip_network(operator).prefixlen == 0:
        return (f"WARNING: SSH (tcp/{SSH_PORT}) is open to the whole internet ({operator}), as asked "
                f"with --allow-ssh-from-anywhere; only the host's key login stands in the way.")
    return None


def check_network_spec(spec: HostSpec) -> tuple[str, list[str]]:
    """The operator CIDR (SSH source) and tunnel peers as /32 CIDRs, validated."""
    operator = operator_network(spec.operator_cidr, spec.name, spec.allow_ssh_from_anywhere)
    return operator, [peer_cidr(p) for p in spec.tunnel_peers]


def peer_cidr(address: str) -> str:
    """A tunnel peer's public IPv4 address as the /32 its firewall rule allows."""
    try:
        return f"{ipaddress.IPv4Address(address)}/32"
    except ValueError:
        raise errors.ConfigError(f"Tunnel peer {address!r} is not an IPv4 address (tunnels run over "
                                 f"IPv4 public addresses).") from None


OptionCheck = Callable[[str, str], None]
"""Raises ConfigError if ``value`` is not a valid value of option ``key``."""


@dataclasses.dataclass(frozen=True)
class CheckedSpec:
    """A host spec checked the same way by every cloud provider, before anything is made."""
    options: dict[str, str]
    operator_cidr: str
    peers: list[str]          # /32 CIDRs
    wg_port: int

    def firewall_line(self) -> str:
        peers = ", ".join(self.peers) or "no peer yet (opened per tunnel)"
        return f"tcp/{SSH_PORT} from {self.operator_cidr}; udp/{self.wg_port} from {peers}"

    @property
    def warning(self) -> str | None:
        return open_ssh_warning(self.operator_cidr)


def check_spec(provider: str, spec: HostSpec, known_options: dict[str, str],
               option_checks: dict[str, OptionCheck] | None = None) -> CheckedSpec:
    """Every check that needs no cloud call: names, options (each value), addresses."""
    options = parse_options(provider, spec.options, known_options)
    check_name(provider, spec.name)
    for key, check in (option_checks or {}).items():
        if key in options:
            check(key, options[key])
    operator, peers = check_network_spec(spec)
    return CheckedSpec(options=options, operator_cidr=operator, peers=peers, wg_port=wireguard_port(options))


def check_flag(key: str, value: str) -> None:
    flag({key: value}, key)


def check_pattern(pattern: str, example: str) -> OptionCheck:
    """An option check: the value must match ``pattern`` (e.g. an AMI id), ``example`` shown."""
    compiled = re.compile(pattern)

    def check(key: str, value: str) -> None:
        if not compiled.fullmatch(value):
            raise errors.ConfigError(f"Option {key} {value!r} is not valid.", hint=f"For example {key}={example}.")
    return check


def tags_line(name: str) -> str:
    return "tags on all of it: " + ", ".join(f"{k}={v}" for k, v in ownership_tags(name).items())


@dataclasses.dataclass(frozen=True)
class HostAccess:
    """How the controller will reach a cloud host: its SSH key and the agent's token (0600 files),
    and the host's own SSH key, made here so it is known before first contact."""
    public_key: str
    token_file: Path
    identity_file: Path | None      # None when the user brought their own key (spec.ssh_public_key)
    host_key: cloudinit.HostKey | None   # its private half exists only in the user-data; None
                                         # when the user brings user-data (first use then pins it)

    @property
    def known_hosts(self) -> Path:
        return self.token_file.parent / "known_hosts"

    def agent_fields(self, address: str) -> dict[str, str]:
        remote = AgentLayout(host="-")       # where first boot puts the agent (its defaults)
        fields = {"ssh_target": f"{SSH_USER}@{address}", "token_file": str(self.token_file),
                  "remote_token_file": remote.token_file, "remote_socket": remote.socket,
                  "remote_cloudmig": remote.cloudmig, "known_hosts": str(self.known_hosts)}
        if self.host_key:
            fields["host_key_pinned"] = "1"
        if self.identity_file:
            fields["identity_file"] = str(self.identity_file)
        return fields

    def pin_host_key(self, address: str) -> None:
        """known_hosts with the host's key for its address: ssh then refuses any other key."""
        if self.host_key:
            paths.write_secret(self.known_hosts, f"{address} {self.host_key.public}\n")


def _ed25519(comment: str) -> tuple[str, str]:
    """A new ed25519 key: (OpenSSH private key, OpenSSH public line)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    key = ed25519.Ed25519PrivateKey.generate()
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption()).decode()
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                           serialization.PublicFormat.OpenSSH).decode()
    return private, f"{public} {comment}"


def prepare_access(spec: HostSpec) -> HostAccess:
    """Make the agent token, the host's SSH key and (unless the spec brings one) the
    controller's ed25519 key for host ``spec.name``."""
    d = paths.ensure_private_dir(paths.host_state_dir(spec.name))
    token_file = d / "agent.token"
    paths.write_secret(token_file, secrets.token_urlsafe(32))
    host_key = None if spec.user_data else cloudinit.HostKey(*_ed25519(f"cloudmig-host-{spec.name}"))
    if spec.ssh_public_key:
        return HostAccess(public_key=spec.ssh_public_key.strip(), token_file=token_file, identity_file=None,
                          host_key=host_key)
    private, public = _ed25519(f"cloudmig-{spec.name}")
    identity = d / "ssh_key"
    paths.write_secret(identity, private)
    (d / "ssh_key.pub").write_text(public + "\n")
    return HostAccess(public_key=public, token_file=token_file, identity_file=identity, host_key=host_key)


def user_data_for(spec: HostSpec, access: HostAccess) -> str | bytes:
    """The spec's own user-data if it has one, else cloudmig's first boot (both size-checked)."""
    if spec.user_data:
        return cloudinit.check_size(spec.user_data)
    return cloudinit.user_data(access.token_file.read_text(), access.public_key, host=spec.name,
                               host_key=access.host_key)


def forget_access(name: str) -> None:
    shutil.rmtree(paths.host_state_dir(name), ignore_errors=True)


class Rollback:
    """Undo steps pushed while creating; run newest first if the block fails, then re-raise."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self._steps: list[tuple[str, Callable[[], None]]] = []

    def push(self, what: str, undo: Callable[[], None]) -> None:
        self._steps.append((what, undo))

    def __enter__(self) -> "Rollback":
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is None:
            return False
        self.progress(f"create failed ({exc}); removing what was made")
        for what, undo in reversed(self._steps):
            try:
                undo()
                self.progress(f"removed {what}")
            except Exception as undo_exc:   # keep undoing the rest; the first error is what matters
                log.error("could not remove %s while rolling back: %s", what, undo_exc)
                self.progress(f"could NOT remove {what}: {undo_exc} (run `cloudmig host destroy` again)")
        return False


def reserve(inv: Inventory, spec: HostSpec, options: dict[str, str]) -> HostRecord:
    """Record a pending host, refusing a name already in the inventory."""
    with inv.transaction() as data:
        if spec.name in data.hosts:
            raise errors.ConfigError(f"Host {spec.name!r} already exists ({data.hosts[spec.name].provider}).",
                                     hint=f"Destroy it first: cloudmig host destroy {spec.name}")
        record = HostRecord(name=spec.name, provider=spec.provider, state="pending", transport="ssh",
                            options=dict(options), created_at=time.time())
        data.hosts[spec.name] = record
    return record


def forget_host(inv: Inventory, name: str) -> None:
    """Forget a host (destroyed, or whose creation failed): its access files and its record."""
    forget_access(name)
    forget(inv, name)


def mark_running(inv: Inventory, record: HostRecord, address: str | None, resources: dict[str, str],
                 access: HostAccess) -> HostRecord:
    """Record a created cloud host: its VM is up (the agent is reached later, over SSH)."""
    record.public_address = address
    record.state = "running"
    record.resources = resources
    record.agent = access.agent_fields(address or "")
    if address:
        access.pin_host_key(address)
    save(inv, record)
    return record


def save(inv: Inventory, record: HostRecord) -> None:
    with inv.transaction() as data:
        data.hosts[record.name] = record


def forget(inv: Inventory, name: str) -> None:
    with inv.transaction() as data:
        data.hosts.pop(name, None)
