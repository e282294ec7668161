"""From a plan file to the moves it makes, checked against the inventory and the hosts.

    plan, where, text = model.load(path)
    resolved = resolve.resolve(plan, where, inventory.read(), memory=resolve.measure(...))

Every refusal names the plan's line and the reason (unknown container, group or host, a
container selected twice, a dependency on a later wave or a cycle, capacity exceeded); nothing
is changed. The result is frozen into the plan's records when it is applied: a resumed plan
moves what was resolved then, not what a selector would match now.
"""

from __future__ import annotations

import math
from typing import Any, Callable

from pydantic import BaseModel, Field

from cloudmig import errors
from cloudmig.inventory import ContainerRecord, InventoryData
from cloudmig.migration.preflight import MEMORY_FLOOR_BYTES, MEMORY_HEADROOM
from cloudmig.plans.model import Cutover, Health, Located, Plan, Selector


class Step(BaseModel):
    """One container's move."""
    container: str
    wave: int
    source: str
    destination: str
    mode: str
    after: list[str] = Field(default_factory=list)     # containers of this plan, moved first
    level: int = 0                                     # within its wave: after every dependency
    health: Health | None = None
    cutover: Cutover | None = None
    memory_bytes: int = 0


class WaveSteps(BaseModel):
    name: str
    on_failure: str
    steps: list[Step]

    def levels(self) -> list[list[Step]]:
        out: dict[int, list[Step]] = {}
        for s in self.steps:
            out.setdefault(s.level, []).append(s)
        return [out[k] for k in sorted(out)]


class NewHost(BaseModel):
    name: str
    provider: str
    options: dict[str, str] = Field(default_factory=dict)
    operator_cidr: str | None = None
    allow_ssh_from_anywhere: bool = False

    def spec(self):
        from cloudmig import providers
        return providers.HostSpec(name=self.name, provider=self.provider, options=dict(self.options),
                                  operator_cidr=self.operator_cidr,
                                  allow_ssh_from_anywhere=self.allow_ssh_from_anywhere)


class Resolved(BaseModel):
    name: str
    limits: dict[str, int | None]
    waves: list[WaveSteps]
    create: list[NewHost] = Field(default_factory=list)
    decommission: bool = False          # `apply --decommission`: destroy emptied source hosts
    drain_timeout_s: float = 60.0

    def sources(self) -> list[str]:
        return sorted({s.source for s in self.steps()})

    def steps(self) -> list[Step]:
        return [s for w in self.waves for s in w.steps]


def need_bytes(rss: int) -> int:
    """What a destination must have free for a container of ``rss`` (the migration's preflight)."""
    return int(rss * MEMORY_HEADROOM) + MEMORY_FLOOR_BYTES


def selected(sel: Selector, loc: tuple[Any, ...], plan: Plan, where: Located,
             data: InventoryData) -> list[ContainerRecord]:
    found: dict[str, ContainerRecord] = {}
    if sel.group is not None:
        if sel.group not in plan.groups:
            raise where.error(loc + ("group",), f"unknown group {sel.group!r} "
                              f"(groups: {', '.join(sorted(plan.groups)) or 'none'})")
        found.update({c.name: c for c in selected(plan.groups[sel.group], ("groups", sel.group),
                                                  plan, where, data)})
    for i, name in enumerate(sel.containers):
        if name not in data.containers:
            raise where.error(loc + ("containers", i), f"unknown container {name!r}",
                              hint="`cloudmig ps` lists them.")
        found[name] = data.containers[name]
    for i, host in enumerate(sel.hosts):
        if host not in data.hosts:
            raise where.error(loc + ("hosts", i), f"unknown host {host!r}", hint="`cloudmig hosts` lists them.")
        found.update({c.name: c for c in data.containers.values() if c.host == host})
    if sel.labels:
        found.update({c.name: c for c in data.containers.values()
                      if all(c.labels.get(k) == v for k, v in sel.labels.items())})
    return sorted(found.values(), key=lambda c: c.name)


def resolve(plan: Plan, where: Located, data: InventoryData,
            memory: Callable[[ContainerRecord], int] = lambda c: c.memory_limit_bytes or 0,
            available: Callable[[str], int] = lambda host: 1 << 62) -> Resolved:
    """The plan's steps; ``memory`` gives a container's resident memory, ``available`` a
    host's available memory (the caller asks the agents; validation without hosts uses the
    limits the containers were run with)."""
    created = _created(plan, where, data)
    known = set(data.hosts) | {h.name for h in created}
    for name in plan.hosts:
        if name not in known:
            raise where.error(("hosts", name), f"unknown host {name!r}", hint="`cloudmig hosts` lists them.")
    for name, sel in plan.groups.items():
        if sel.group is not None:
            raise where.error(("groups", name, "group"), "a group cannot name another group")
    room: dict[str, int] = {}
    planned: dict[str, int] = {}

    def room_of(host: str) -> int:
        if host not in room:
            cap = plan.hosts.get(host)
            limit = available(host)
            if cap is not None and cap.max_memory_mib is not None:
                limit = min(limit, cap.max_memory_mib << 20)
            room[host] = limit
        return room[host]

    steps: dict[str, Step] = {}
    origin: dict[str, tuple[Any, ...]] = {}
    waves: list[WaveSteps] = []
    for wi, wave in enumerate(plan.waves):
        wsteps: list[Step] = []
        for mi, move in enumerate(wave.moves):
            loc = ("waves", wi, "moves", mi)
            for ti, host in enumerate(move.to):
                if host not in known:
                    raise where.error(loc + ("to", ti), f"unknown host {host!r}", hint="`cloudmig hosts` lists them.")
            chosen = selected(move.select, loc + ("select",), plan, where, data)
            if not chosen:
                raise where.error(loc + ("select",), "selects no container")
            for c in chosen:
                if c.name in steps:
                    # named twice: refused; matched again by a label, host or group: the
                    # earlier move has it (a later "everything else on h1" is natural)
                    if c.name not in move.select.containers:
                        continue
                    first = origin[c.name]
                    raise where.error(loc + ("select",), f"container {c.name!r} is already moved by "
                                      f"wave {plan.waves[first[1]].name} (line {where.line(first)})")
                rss = memory(c)
                need = need_bytes(rss)
                targets = [h for h in move.to if h != c.host]
                if not targets:
                    raise where.error(loc + ("to",), f"container {c.name!r} already runs on {c.host}, "
                                      "the only destination given")
                # the most room, then the fewest planned here, then the order given
                best = max(targets, key=lambda h: (room_of(h), -planned.get(h, 0), -move.to.index(h)))
                planned[best] = planned.get(best, 0) + 1
                if room_of(best) < need:
                    raise where.error(loc + ("to",), f"capacity exceeded: {c.name} needs about "
                                      f"{math.ceil(need / 2**20)} MiB on its destination; the most room "
                                      f"left on {', '.join(targets)} is {max(room_of(best), 0) >> 20} MiB on {best}",
                                      hint="Add destinations, raise hosts.<name>.max_memory_mib or move fewer.")
                room[best] -= need
                steps[c.name] = Step(container=c.name, wave=wi, source=c.host, destination=best,
                                     mode=move.mode or plan.mode, health=move.health, cutover=move.cutover,
                                     memory_bytes=rss)
                origin[c.name] = loc
                wsteps.append(steps[c.name])
        waves.append(WaveSteps(name=wave.name, on_failure=wave.on_failure or plan.on_failure, steps=wsteps))

    # dependencies: names or groups, onto containers of this plan in this wave or earlier
    for wi, wave in enumerate(plan.waves):
        for mi, move in enumerate(wave.moves):
            loc = ("waves", wi, "moves", mi, "after")
            deps: list[str] = []
            for di, ref in enumerate(move.after):
                if ref in plan.groups:
                    names = [c.name for c in selected(plan.groups[ref], ("groups", ref), plan, where, data)]
                elif ref in data.containers:
                    names = [ref]
                else:
                    raise where.error(loc + (di,), f"unknown container or group {ref!r} in after")
                for n in names:
                    if n not in steps:
                        raise where.error(loc + (di,), f"after {ref!r}: {n} is not moved by this plan")
                    if steps[n].wave > wi:
                        raise where.error(loc + (di,), f"after {ref!r}: {n} moves in a later wave "
                                          f"({plan.waves[steps[n].wave].name})")
                deps += names
            for s in waves[wi].steps:
                if origin[s.container] == ("waves", wi, "moves", mi):
                    s.after = sorted(set(deps) - {s.container})
    for wi, wave in enumerate(waves):
        _levels(wave, wi, where, origin)
    return Resolved(name=plan.name, limits=plan.limits.model_dump(), waves=waves, create=created,
                    drain_timeout_s=plan.drain_timeout_s)


def _created(plan: Plan, where: Located, data: InventoryData) -> list[NewHost]:
    """The hosts the plan creates; one that exists already with that provider is kept as it is."""
    from cloudmig import providers
    out = []
    for key, spec in plan.create.items():
        if spec.provider not in providers.available():
            raise where.error(("create", key, "provider"), f"unknown provider {spec.provider!r} "
                              f"(providers: {', '.join(sorted(providers.available()))})")
        for name in spec.names(key):
            have = data.hosts.get(name)
            if have is not None and have.provider != spec.provider:
                raise where.error(("create", key), f"host {name} exists already, with provider {have.provider}")
            new = NewHost(name=name, provider=spec.provider, options=spec.options,
                          operator_cidr=spec.operator_cidr, allow_ssh_from_anywhere=spec.allow_ssh_from_anywhere)
            if have is None:             # checked as `host create --dry-run` would: nothing is made
                try:
                    providers.load(spec.provider).plan_create(new.spec())
                except errors.CloudmigError as exc:
                    raise where.error(("create", key), str(exc)) from None
            out.append(new)
    return out


def _levels(wave: WaveSteps, wi: int, where: Located, origin: dict[str, tuple[Any, ...]]) -> None:
    """Each step's level in its wave: 0 without dependencies inside the wave, else one more than
    its dependencies'. A cycle is refused, named in order."""
    by_name = {s.container: s for s in wave.steps}
    done: dict[str, int] = {}

    def visit(name: str, path: list[str]) -> int:
        if name in done:
            return done[name]
        if name in path:
            cycle = path[path.index(name):] + [name]
            raise where.error(origin[cycle[0]] + ("after",), "dependency cycle: " + " -> ".join(cycle))
        step = by_name[name]
        inside = [d for d in step.after if d in by_name]
        level = 1 + max((visit(d, path + [name]) for d in inside), default=-1)
        done[name] = level
        return level

    for s in wave.steps:
        s.level = visit(s.container, [])
