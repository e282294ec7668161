"""Plans that commands write: `cloudmig evacuate HOST` and `cloudmig rebalance`.

Both produce an ordinary plan file's text (shown to the user before it is applied, kept in the
plan's records, resumable like any plan), checked and resolved as if it had been written by
hand.

    text = generate.evacuate("h1", to=["h2", "h3"], limit=2)
    text, loads = generate.rebalance(max_memory_pct=80, limit=2)
"""

from __future__ import annotations

import time

import yaml

from cloudmig import errors
from cloudmig.control.session import Session
from cloudmig.inventory import Inventory


def _name(kind: str) -> str:
    return f"{kind}-{time.strftime('%Y%m%d-%H%M%S')}"


def evacuate(host: str, to: list[str] | None, limit: int) -> str | None:
    """Everything on ``host`` onto ``to`` (default: every other ready host; each container
    onto the one with the most memory left). None when nothing runs there."""
    data = Inventory().read()
    data.host(host)
    if not any(c.host == host for c in data.containers.values()):
        return None
    targets = to or sorted(h.name for h in data.hosts.values() if h.name != host and h.state == "ready")
    if not targets:
        raise errors.PlanError(f"No other ready host to evacuate {host} onto.", hint="Create or add one first.")
    plan = {"name": _name(f"evacuate-{host}")[:41], "limits": {"total": limit},
            "waves": [{"name": "evacuate", "moves": [{"select": {"hosts": [host]}, "to": targets}]}]}
    return yaml.safe_dump(plan, sort_keys=False)


def loads() -> dict[str, dict]:
    """Per ready host: its containers' resident memory, and that as a share of what they use
    plus what the host has available."""
    data = Inventory().read()
    out: dict[str, dict] = {}
    with Session(Inventory()) as session:
        for h in sorted(data.hosts.values(), key=lambda h: h.name):
            if h.state != "ready":
                continue
            agent = session.agent(h.name)
            rss = {c.name: int(agent.memory(c.name).rss) for c in data.containers.values()
                   if c.host == h.name and c.state == "running"}
            capacity = sum(rss.values()) + int(agent.memory().mem_available)
            out[h.name] = {"containers": rss, "used": sum(rss.values()), "capacity": capacity}
    return out


def pct(load: dict, extra: int = 0) -> float:
    return 100.0 * (load["used"] + extra) / max(load["capacity"], 1)


def rebalance(max_memory_pct: float, limit: int) -> tuple[str | None, dict[str, dict]]:
    """Containers off hosts above ``max_memory_pct``, largest first, each onto the least loaded
    host that stays at or under it, until the host is under it too. None: nothing to move."""
    found = loads()
    moves: list[tuple[str, str]] = []
    added = {h: 0 for h in found}
    for host in sorted(found, key=lambda h: -pct(found[h])):
        load = found[host]
        removed = 0
        for name, rss in sorted(load["containers"].items(), key=lambda kv: -kv[1]):
            if 100.0 * (load["used"] - removed) / max(load["capacity"], 1) <= max_memory_pct:
                break
            fits = [h for h in found if h != host and pct(found[h], added[h] + rss) <= max_memory_pct]
            if not fits:
                continue
            dest = min(fits, key=lambda h: (pct(found[h], added[h] + rss), h))
            moves.append((name, dest))
            added[dest] += rss
            removed += rss
    if not moves:
        return None, found
    plan = {"name": _name("rebalance"), "limits": {"total": limit},
            "waves": [{"name": "rebalance", "moves": [{"select": {"containers": [n]}, "to": [d]}
                                                      for n, d in moves]}]}
    return yaml.safe_dump(plan, sort_keys=False), found
