"""`cloudmig hosts` and `cloudmig host create|destroy`: hosts of every provider.

    $ cloudmig host create --provider aws --operator-cidr 203.0.113.7/32 --option region=eu-west-1 web1
    $ cloudmig host create --provider azure --operator-cidr 203.0.113.7/32 --dry-run web2
    $ cloudmig host add s1 --ssh root@203.0.113.9 --identity ~/.ssh/id_ed25519   # adopt a machine
    $ cloudmig hosts --json
    $ cloudmig host destroy web1          # safe to run again
"""

from __future__ import annotations

import typer

from cloudmig import errors
from cloudmig.cli._app import app, console, print_json

host_app = typer.Typer(help="Create and destroy hosts with a provider (lab, aws, azure, ...).",
                       no_args_is_help=True)
app.add_typer(host_app, name="host")


def _progress(line: str) -> None:
    console.print(f"  {line}", markup=False, style="bold red" if line.startswith("WARNING") else None)


def _parse_options(pairs: list[str]) -> dict[str, str]:
    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise errors.ConfigError(f"--option {pair!r} is not KEY=VALUE.")
        options[key.strip()] = value.strip()
    return options


@app.command("hosts")
def hosts(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Hosts of all providers: name, provider, public address, state (from the inventory)."""
    from cloudmig.inventory import Inventory
    records = sorted(Inventory().read().hosts.values(), key=lambda h: h.name)
    if as_json:
        print_json([{"name": h.name, "provider": h.provider, "public_address": h.public_address,
                     "state": h.state} for h in records])
        return
    if not records:
        console.print("no hosts (create some: `cloudmig lab up` or `cloudmig host create`)")
        return
    from rich.table import Table
    table = Table(box=None, pad_edge=False)
    for col in ("NAME", "PROVIDER", "PUBLIC ADDRESS", "STATE"):
        table.add_column(col)
    for h in records:
        table.add_row(h.name, h.provider, h.public_address or "-", h.state)
    console.print(table)


@host_app.command("create")
def create(name: str = typer.Argument(..., help="Host name, unique across providers."),
           provider: str = typer.Option(..., "--provider", help="Provider: lab, aws, azure, ..."),
           option: list[str] = typer.Option(None, "--option", help="Provider-only option KEY=VALUE (repeatable)."),
           operator_cidr: str = typer.Option(None, "--operator-cidr",
                                             help="Your address/CIDR: the only source allowed to reach SSH."),
           allow_ssh_from_anywhere: bool = typer.Option(False, "--allow-ssh-from-anywhere",
                                                        help="Accept an --operator-cidr of 0.0.0.0/0 or ::/0 "
                                                             "(SSH open to everyone; warned loudly)."),
           tunnel_peer: list[str] = typer.Option(None, "--tunnel-peer",
                                                 help="Public address allowed to reach WireGuard (repeatable)."),
           ssh_public_key: str = typer.Option(None, "--ssh-public-key",
                                              help="Use this public key file instead of a generated key."),
           dry_run: bool = typer.Option(False, "--dry-run", help="Print what would be created; change nothing."),
           no_wait: bool = typer.Option(False, "--no-wait",
                                        help="Return once the VM runs, without waiting for it to join."),
           timeout: float = typer.Option(900, "--timeout", min=1,
                                         help="Seconds a cloud host may take to boot and join."),
           destroy_on_failure: bool = typer.Option(False, "--destroy-on-failure",
                                                   help="Destroy a host whose first boot failed "
                                                        "(default: keep it for inspection).")) -> None:
    """Create a host with a provider (and everything it needs); a cloud host then boots and
    joins by itself, over SSH, and ends ready."""
    from pathlib import Path

    from cloudmig import providers
    key = Path(ssh_public_key).read_text().strip() if ssh_public_key else None
    spec = providers.HostSpec(name=name, provider=provider, options=_parse_options(option or []),
                              tunnel_peers=list(tunnel_peer or []), operator_cidr=operator_cidr,
                              allow_ssh_from_anywhere=allow_ssh_from_anywhere, ssh_public_key=key)
    impl = providers.load(provider)
    if dry_run:
        console.print(f"would create host {name} with {provider}:")
        for line in impl.plan_create(spec):
            _progress(line)
        return
    from cloudmig.control import hosts
    with console.status(f"creating {name} with {provider}"):
        record = hosts.create(spec, _progress, wait=not no_wait, timeout_s=timeout,
                              destroy_on_failure=destroy_on_failure)
    console.print(f"host {record.name} ({record.provider}) {record.state} at {record.public_address}")


@host_app.command("join")
def join(name: str = typer.Argument(..., help="A cloud host whose VM runs (made with --no-wait, or whose join failed)."),
         timeout: float = typer.Option(900, "--timeout", min=1, help="Seconds it may take to boot and join."),
         destroy_on_failure: bool = typer.Option(False, "--destroy-on-failure",
                                                 help="Destroy the host if it does not join.")) -> None:
    """Wait for a cloud host's first boot and adopt it over SSH: it ends ready."""
    from cloudmig.control import hosts
    from cloudmig.inventory import Inventory
    record = Inventory().read().host(name)
    with console.status(f"joining {name} ({record.provider})"):
        record = hosts.join(record, _progress, timeout_s=timeout, destroy_on_failure=destroy_on_failure)
    console.print(f"host {record.name} ({record.provider}) {record.state} at {record.public_address}")


@host_app.command("add")
def add(name: str = typer.Argument(..., help="Host name, unique across providers."),
        ssh: str = typer.Option(..., "--ssh", help="USER@ADDRESS of the machine to adopt."),
        identity: str = typer.Option(None, "--identity", help="Private key file for SSH."),
        port: int = typer.Option(22, "--port", help="sshd's port on the machine."),
        option: list[str] = typer.Option(None, "--option",
                                         help="ssh provider option KEY=VALUE (remote_venv, remote_dir, "
                                              "agent_start, cgroup_parent, netns_prefix).")) -> None:
    """Adopt an existing machine over SSH: install cloudmig there, start its agent, pin its host key."""
    from cloudmig import providers
    options = _parse_options(option or [])
    options.update({"target": ssh, "port": str(port)})
    if identity:
        options["identity"] = identity
    spec = providers.HostSpec(name=name, provider="ssh", options=options)
    record = providers.load("ssh").create_host(spec, _progress)
    console.print(f"host {record.name} (ssh) {record.state} at {record.public_address}")


@host_app.command("destroy")
def destroy(name: str = typer.Argument(..., help="Host to remove."),
            provider: str = typer.Option(None, "--provider",
                                         help="Sweep this provider for the host's tagged resources even if "
                                              "the inventory does not know it.")) -> None:
    """Remove a host and everything its provider made for it. Safe to run again."""
    from cloudmig.control import hosts
    from cloudmig.inventory import HostRecord, Inventory
    record = Inventory().read().hosts.get(name)
    if record is None and provider is None:
        console.print(f"host {name} is not in the inventory: nothing to do "
                      f"(add --provider P to sweep a cloud for leftovers)")
        return
    record = record or HostRecord(name=name, provider=provider)
    with console.status(f"destroying {name} ({record.provider})"):
        hosts.destroy(record, _progress)
    console.print(f"host {name} destroyed")
