"""One contract, every provider: same verbs, same expectations.

lab (network namespaces on this machine), ssh (a namespace machine with a real sshd, adopted),
aws (moto's EC2 server, validations on) and azure (the strict local ARM server). Where a
provider truly differs it says so in its ProviderCase (tests/providers/contract_cases.py):
the state a new host is in, how its agent is reached, what describe_host says once it is
destroyed, which inputs it refuses; nothing is skipped.
"""

from __future__ import annotations

import ipaddress
import os
import stat

import pytest

from cloudmig import errors, providers
from cloudmig.inventory import HostRecord, Inventory
from cloudmig.providers import HostSpec
from cloudmig.providers.lab import cleanup

from cloudsim.arm_server import FixedTokenCredential
from contract_cases import (CAPABILITY_OPTIONS, COMMON_CAPABILITIES, AdoptableMachine, ProviderCase,
                            aws_footprint, azure_footprint, lab_footprint)
from lab import VENV_BIN, Lab, new_lab_id

PROVIDERS = ["lab", "ssh", "aws", "azure"]
OPERATOR = "203.0.113.7/32"          # documentation addresses: nothing is ever sent to them
PEER = "198.51.100.2"
NEW_PEER = "192.0.2.77"


def _destroy_leftovers(provider) -> None:
    """Hosts of this provider a failed test left in the inventory (teardown, before the sweep)."""
    for rec in [h for h in Inventory().read().hosts.values() if h.provider == provider.name]:
        provider.destroy_host(rec)


# ---------------------------------------------------------------------------- the providers
@pytest.fixture
def lab_case(state_dir, monkeypatch):
    from cloudmig.providers.lab import LabProvider

    lab_id = new_lab_id()
    monkeypatch.setenv("CLOUDMIG_LAB_ID", lab_id)
    lab = LabProvider()
    world = Lab(state_dir, lab_id)

    def spec(i: int, **options: str) -> HostSpec:
        return HostSpec(name=f"h{i}", provider="lab", options={"index": str(i), **options})

    try:
        yield ProviderCase(
            provider=lab, capabilities=frozenset({"create", "destroy", "wan-rate"}),
            created_state="ready", transport="unix", state_after_destroy="gone", spec=spec,
            bad_specs={"a bad name": HostSpec(name="Bad_Name", provider="lab"),
                       "a name that is not hN": HostSpec(name="web1", provider="lab"),
                       "an index other than the name's": spec(1, index="2")},
            plan_mentions=lambda s: f"network namespace {lab_id}-{s.name}",
            address=lambda s: lab.topo.public_address(int(s.options["index"])),
            footprint=lambda: lab_footprint(world))
    finally:
        try:
            lab.down()      # every lab host: agents, namespaces, links, cgroups, host dirs, the bridge
        finally:            # and if down() itself failed half-way, what is on the machine by name
            cleanup.sweep(lab.topo)
            lab.topo.remove_bridge()
    assert not world.leftovers(), world.leftovers()


@pytest.fixture
def ssh_case(state_dir, tmp_path):
    from cloudmig.providers.ssh import SshProvider

    lab_id = new_lab_id()
    machine = AdoptableMachine(tmp_path, state_dir, lab_id)
    ssh = SshProvider()

    def options(name: str) -> dict[str, str]:
        # cloudmig is installed on the machine already: it shares this file system and venv
        return {"target": f"root@{machine.address}", "port": str(machine.sshd.port),
                "identity": str(machine.sshd.client_key), "remote_venv": str(VENV_BIN.parent),
                "remote_dir": str(machine.remote_root / name), "agent_start": "nohup",
                "cgroup_parent": f"/cloudmig/{lab_id}-{name}", "netns_prefix": f"{lab_id}-c-{name}"}

    def spec(i: int, **changes: str | None) -> HostSpec:
        opts = options(f"s{i}")
        opts.update(changes)
        return HostSpec(name=f"s{i}", provider="ssh", options={k: v for k, v in opts.items() if v is not None})

    try:
        machine.start()
        yield ProviderCase(
            provider=ssh, capabilities=frozenset({"create", "destroy", "adopt"}),
            created_state="ready", transport="ssh",
            # the machine outlives its adoption: describe finds no agent there, not no machine
            state_after_destroy="error", spec=spec,
            bad_specs={"a bad name": HostSpec(name="Bad_Name", provider="ssh", options=options("Bad_Name")),
                       "no target": spec(1, target=None),
                       "a target that is not USER@ADDRESS": spec(1, target="root@not an address"),
                       "a port out of range": spec(1, port="70000"),
                       "an identity file that does not exist": spec(1, identity=str(tmp_path / "no-such-key")),
                       "an unknown agent_start": spec(1, agent_start="cron"),
                       "an unknown option": spec(1, colour="blue")},
            plan_mentions=lambda s: f"SSH to root@{machine.address} port {machine.sshd.port}",
            address=lambda s: machine.address,
            footprint=machine.footprint)
    finally:
        try:
            _destroy_leftovers(ssh)
        finally:
            machine.stop()
    assert not machine.leftovers(), machine.leftovers()


def _cloud_bad_specs(cloud: str, spec) -> dict[str, HostSpec]:
    no_operator = spec(1)
    no_operator.operator_cidr = None
    bad_operator = spec(1)
    bad_operator.operator_cidr = "203.0.113.7/99"
    bad_peer = spec(1)
    bad_peer.tunnel_peers = ["not-an-ip"]
    anywhere, host_bits = spec(1), spec(1)
    anywhere.operator_cidr, host_bits.operator_cidr = "0.0.0.0/0", "203.0.113.7/24"
    anywhere6 = spec(1)
    anywhere6.operator_cidr = "::/0"
    bad_option = {"aws": spec(1, elastic_ip="maybe"), "azure": spec(1, image="debian-12")}[cloud]
    return {"a bad name": HostSpec(name="Bad_Name", provider=cloud, operator_cidr=OPERATOR),
            "no operator CIDR": no_operator, "a bad operator CIDR": bad_operator,
            "SSH open to the whole internet, not asked for": anywhere,
            "SSH open to every IPv6 address, not asked for": anywhere6,
            "an operator CIDR with host bits": host_bits,
            "a bad value of a provider option": bad_option,
            "a tunnel peer that is not an address": bad_peer,
            "a WireGuard port out of range": spec(1, wg_port="0"),
            "an unknown option": spec(1, colour="blue")}


def _cloud_spec(cloud: str):
    def spec(i: int, **options: str) -> HostSpec:
        return HostSpec(name=f"ct{i}-{cloud}", provider=cloud, options=options, operator_cidr=OPERATOR,
                        tunnel_peers=[PEER])
    return spec


@pytest.fixture
def aws_case(aws_env, state_dir):
    from cloudmig.providers.aws import AwsProvider

    aws, spec, ec2 = AwsProvider(), _cloud_spec("aws"), aws_env.ec2()
    baseline = aws_footprint(ec2, state_dir)        # moto lives for the session: compare with now
    try:
        yield ProviderCase(
            provider=aws, capabilities=frozenset({"create", "destroy", "tunnel-firewall", "elastic-ip"}),
            created_state="running", transport="ssh", state_after_destroy="gone", spec=spec,
            bad_specs=_cloud_bad_specs("aws", spec),
            plan_mentions=lambda s: f"cloudmig:host={s.name}", address=None,
            footprint=lambda: aws_footprint(ec2, state_dir))
    finally:
        _destroy_leftovers(aws)
    assert aws_footprint(ec2, state_dir) == baseline


@pytest.fixture
def azure_case(azure_env, state_dir):
    from cloudmig.providers.azure import AzureProvider

    azure, spec = AzureProvider(credential=FixedTokenCredential()), _cloud_spec("azure")
    try:
        yield ProviderCase(
            provider=azure, capabilities=frozenset({"create", "destroy", "tunnel-firewall"}),
            created_state="running", transport="ssh", state_after_destroy="gone", spec=spec,
            bad_specs=_cloud_bad_specs("azure", spec),
            plan_mentions=lambda s: f"cloudmig:host={s.name}", address=None,
            footprint=lambda: azure_footprint(azure_env, state_dir))
    finally:
        _destroy_leftovers(azure)
    assert azure_footprint(azure_env, state_dir) == {"resources": [], "host_dirs": []}


@pytest.fixture(params=PROVIDERS)
def case(request) -> ProviderCase:
    return request.getfixturevalue(f"{request.param}_case")


def _names(case: ProviderCase) -> list[str]:
    return [h.name for h in case.provider.list_hosts()]


def _refused(what: str, verb: str, call) -> None:
    """``call`` must raise ConfigError (bad input, refused before anything changed), with a message."""
    try:
        call()
    except errors.ConfigError as exc:
        assert str(exc), f"{verb} refused {what} without a message"
        return
    pytest.fail(f"{verb} accepted {what}")


# ---------------------------------------------------------------------------- the contract
def test_is_a_registered_provider(case):
    p = case.provider
    assert isinstance(p, providers.Provider)
    assert p.name in providers.available()                      # entry point cloudmig.providers
    assert type(providers.load(p.name)) is type(p)
    assert COMMON_CAPABILITIES <= case.capabilities <= p.capabilities
    for capability, option in CAPABILITY_OPTIONS.items():
        if capability in p.capabilities:
            assert option in p.option_help, f"{p.name} has {capability} but documents no {option} option"
    assert all(isinstance(k, str) and v for k, v in p.option_help.items())


def test_plan_create_changes_nothing(case, state_dir):
    before = case.footprint()
    spec = case.spec(1)
    lines = case.provider.plan_create(spec)
    assert lines and all(isinstance(line, str) and line for line in lines)
    assert any(case.plan_mentions(spec) in line for line in lines), lines
    assert case.footprint() == before
    assert spec.name not in _names(case)
    assert not (state_dir / "inventory.json").exists()


def test_create_describe_list_destroy_twice(case, state_dir):
    p, spec = case.provider, case.spec(1)
    before = case.footprint()
    progress: list[str] = []

    rec = p.create_host(spec, progress.append)
    assert progress, "create_host reported no progress"
    assert (rec.name, rec.provider) == (spec.name, p.name)
    assert rec.state == case.created_state and rec.transport == case.transport
    assert rec.public_address and ipaddress.IPv4Address(rec.public_address)
    if case.address:
        assert rec.public_address == case.address(spec)
    # how the agent is reached: its token a 0600 file in the host's state dir, plus the channel
    token = rec.agent["token_file"]
    assert os.path.dirname(token) == str(state_dir / "hosts" / spec.name)
    assert stat.S_IMODE(os.stat(token).st_mode) == 0o600
    if rec.transport == "unix":
        assert stat.S_ISSOCK(os.stat(rec.agent["socket"]).st_mode)
    else:
        assert rec.agent["ssh_target"] == f"root@{rec.public_address}"
    assert Inventory().read().hosts[spec.name] == rec
    assert case.footprint() != before

    [listed] = [h for h in p.list_hosts() if h.name == spec.name]
    assert listed.provider == p.name and listed.state == case.created_state
    described = p.describe_host(rec)
    assert described.state == case.created_state and described.public_address == rec.public_address

    p.allow_tunnel_peer(rec, NEW_PEER, 51820)       # the same verb everywhere (a no-op without a firewall)

    p.destroy_host(rec)
    assert spec.name not in _names(case)
    assert spec.name not in Inventory().read().hosts
    assert p.describe_host(rec).state == case.state_after_destroy
    assert case.footprint() == before

    p.destroy_host(rec)                             # again: nothing left to do, and no error
    assert spec.name not in Inventory().read().hosts
    assert case.footprint() == before


def test_refuses_bad_input_before_any_change(case):
    before = case.footprint()
    for what, spec in case.bad_specs.items():
        _refused(what, "plan_create", lambda: case.provider.plan_create(spec))     # --dry-run refuses it too
        _refused(what, "create_host", lambda: case.provider.create_host(spec))
        assert Inventory().read().hosts == {}, what
        assert case.footprint() == before, what
        assert spec.name not in _names(case), what


def test_a_name_in_use_is_refused(case):
    p = case.provider
    rec = p.create_host(case.spec(1))
    other = case.spec(2).name
    try:
        before = case.footprint()
        with pytest.raises(errors.ConfigError, match="already exists"):
            p.create_host(case.spec(1))
        assert Inventory().read().hosts[rec.name] == rec
        assert case.footprint() == before
        assert p.describe_host(rec).state == case.created_state       # the first host is untouched

        # one inventory for all providers: a name another provider's host holds is taken too
        with Inventory().transaction() as data:
            data.hosts[other] = HostRecord(name=other, provider="elsewhere", state="ready")
        with pytest.raises(errors.ConfigError, match="already exists"):
            p.create_host(case.spec(2))
        assert Inventory().read().hosts[other].provider == "elsewhere"
        assert case.footprint() == before
    finally:
        with Inventory().transaction() as data:
            data.hosts.pop(other, None)
        p.destroy_host(rec)
