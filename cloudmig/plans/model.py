"""The plan file: YAML checked by pydantic, every error given with its line.

    plan = model.load(Path("vendor-exit.yaml"))      # or errors.PlanError("file:LINE: reason")
    print(model.schema_json())                       # `cloudmig plan schema`

A plan names the hosts it may fill (with an optional memory cap each), groups of containers
(by name, label or source host), and waves of moves in order; each move says where its
containers go, after which containers or groups, how (mode), how to tell it worked (health)
and the limits on how many move at once.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Literal

import pydantic
import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from cloudmig import errors

NAME_RE = r"^[a-z0-9][a-z0-9_.-]{0,40}$"
OnFailure = Literal["stop", "continue", "rollback-wave"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Selector(_Strict):
    """Which containers: any of these (their union)."""
    containers: list[str] = Field(default_factory=list, description="by name")
    labels: dict[str, str] = Field(default_factory=dict, description="every label matches (`run --label`)")
    hosts: list[str] = Field(default_factory=list, description="everything running on these hosts")
    group: str | None = Field(None, description="a group of the plan's `groups`")

    @model_validator(mode="after")
    def _some(self) -> "Selector":
        if not (self.containers or self.labels or self.hosts or self.group):
            raise ValueError("select nothing: give containers, labels, hosts or group")
        return self


class Health(_Strict):
    """Checked after the move, through the container's endpoint on its new host."""
    tcp: int | None = Field(None, description="container port: a TCP connect must succeed")
    http: str | None = Field(None, description="path: an HTTP GET must answer 2xx/3xx")
    port: int | None = Field(None, description="container port for `http` (default: the first published)")
    command: list[str] | None = Field(None, description="run on the controller; exit 0 is healthy "
                                      "(env CLOUDMIG_CONTAINER, CLOUDMIG_HOST, CLOUDMIG_ADDRESS)")
    timeout_s: float = Field(10.0, gt=0, le=600)

    @model_validator(mode="after")
    def _one(self) -> "Health":
        if sum(x is not None for x in (self.tcp, self.http, self.command)) != 1:
            raise ValueError("give exactly one of tcp, http, command")
        return self


class Cutover(_Strict):
    """After a healthy move, instead of forwarding from the old endpoint for good: run a hook
    (a DNS update, say), then drain the old endpoint and stop forwarding from it."""
    hook: list[str] | None = Field(None, description="run on the controller; exit 0 (env CLOUDMIG_CONTAINER, "
                                   "CLOUDMIG_HOST, CLOUDMIG_ADDRESS and CLOUDMIG_OLD_ADDRESS, the endpoints)")
    drain_timeout_s: float = Field(60.0, ge=0, le=86400, description="wait this long at most for the old "
                                   "endpoint's connections to end")


class Limits(_Strict):
    """At most this many migrations at once."""
    total: int | None = Field(None, ge=1, description="in the whole plan")
    per_source: int | None = Field(None, ge=1, description="leaving any one host")
    per_destination: int | None = Field(None, ge=1, description="arriving on any one host")
    per_controller: int | None = Field(None, ge=1, description="run by any one controller process "
                                       "(several share a plan on PostgreSQL: `plan apply --join`)")


class Move(_Strict):
    select: Selector
    to: list[str] = Field(min_length=1, description="destination hosts; containers are spread "
                          "over them, each onto the one with the most room left")
    after: list[str] = Field(default_factory=list,
                             description="containers or groups whose moves must finish first")
    mode: Literal["postcopy", "stopcopy"] | None = None
    health: Health | None = None
    cutover: Cutover | None = Field(None, description="default: keep forwarding from the old endpoint")


class Wave(_Strict):
    name: str = Field(pattern=NAME_RE)
    moves: list[Move] = Field(min_length=1)
    on_failure: OnFailure | None = None


class Destination(_Strict):
    max_memory_mib: int | None = Field(None, ge=1, description="cap on what the plan may place here")


class Create(_Strict):
    """Hosts the plan creates before its first wave (skipped when they exist already)."""
    provider: str = Field(description="lab, aws, azure, ... (`cloudmig host create --provider`)")
    count: int = Field(1, ge=1, le=50, description="more than 1: named <name><first>, <name><first+1>, ...")
    first: int = Field(1, ge=0)
    options: dict[str, str] = Field(default_factory=dict, description="the provider's options")
    operator_cidr: str | None = Field(None, description="aws, azure: the operator's address (CIDR), the only "
                                                        "source SSH is opened to (`--operator-cidr`)")
    allow_ssh_from_anywhere: bool = Field(False, description="accept an operator_cidr of 0.0.0.0/0 or ::/0")

    def names(self, key: str) -> list[str]:
        return [key] if self.count == 1 else [f"{key}{self.first + i}" for i in range(self.count)]


class Plan(_Strict):
    name: str = Field(pattern=NAME_RE)
    create: dict[str, Create] = Field(default_factory=dict)
    hosts: dict[str, Destination] = Field(default_factory=dict,
                                          description="hosts the plan may fill, with optional caps")
    drain_timeout_s: float = Field(60.0, ge=0, le=86400,
                                   description="with `apply --decommission`: how long an emptied source "
                                   "host's forwarded endpoints may keep connections before it is destroyed")
    groups: dict[str, Selector] = Field(default_factory=dict)
    limits: Limits = Field(default_factory=Limits)
    mode: Literal["postcopy", "stopcopy"] = "postcopy"
    on_failure: OnFailure = "stop"
    waves: list[Wave] = Field(min_length=1)


def schema_json() -> str:
    return json.dumps(Plan.model_json_schema(), indent=2)


# ---------------------------------------------------------------------- loading, with lines
class Located:
    """The plan's text and where each value is in it (for errors)."""

    def __init__(self, path: str, root: yaml.Node | None) -> None:
        self.path, self.root = path, root

    def line(self, loc: tuple[Any, ...]) -> int:
        """The 1-based line of the value at ``loc`` (the deepest part of it found)."""
        node, line = self.root, 1
        for part in loc:
            if node is None:
                break
            line = node.start_mark.line + 1
            if isinstance(node, yaml.MappingNode):
                for key, value in node.value:
                    if key.value == part:
                        line, node = key.start_mark.line + 1, value
                        break
                else:
                    return line
            elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
                node = node.value[part]
                line = node.start_mark.line + 1
            else:
                break
        return line

    def error(self, loc: tuple[Any, ...], reason: str, hint: str | None = None) -> errors.PlanError:
        return errors.PlanError(f"{self.path}:{self.line(loc)}: {reason}", hint=hint)


def parse(text: str, path: str = "<plan>") -> tuple[Plan, Located]:
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark else 1
        raise errors.PlanError(f"{path}:{line}: not YAML: {getattr(exc, 'problem', exc)}") from None
    where = Located(path, root)
    if not isinstance(raw, dict):
        raise where.error((), "a plan is a mapping (name, hosts, groups, limits, waves)")
    try:
        return Plan.model_validate(raw), where
    except pydantic.ValidationError as exc:
        first = exc.errors()[0]
        loc = tuple(first["loc"])
        field = ".".join(str(p) for p in loc) or "plan"
        if first["type"] == "extra_forbidden":
            reason = f"unknown key {loc[-1]!r}"
        else:
            reason = f"{field}: {re.sub(r'^Value error, ', '', first['msg'])}"
        raise where.error(loc, reason, hint="`cloudmig plan schema` prints every key a plan may have.") from None


def load(path: Path) -> tuple[Plan, Located, str]:
    try:
        text = path.read_text()
    except OSError as exc:
        raise errors.PlanError(f"Cannot read plan {path}: {exc.strerror}.") from None
    plan, where = parse(text, str(path))
    return plan, where, text
