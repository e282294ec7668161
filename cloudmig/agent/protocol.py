"""The controller <-> agent wire format: typed, versioned JSON, one object per line.

    >>> req = Request(id=1, op="ping", args={}, token="...")
    >>> decode_request(encode(req.to_wire()))
    Request(id=1, op='ping', ...)

A request is ``{"v": 1, "id": N, "token": T, "op": NAME, "args": {...}}``; the answer is
``{"v": 1, "id": N, "ok": true, "result": ...}`` or ``{"v": 1, "id": N, "ok": false,
"error": {"type": ..., "message": ..., "hint": ..., "traceback": ...}}``. Nothing is ever
eval'd or unpickled; messages of another version are refused.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import typing

from cloudmig import errors

PROTOCOL_VERSION = 1
MAX_MESSAGE_BYTES = 16 * 1024 * 1024  # one JSON line; bulk data never travels here


@dataclasses.dataclass
class Request:
    id: int
    op: str
    args: dict[str, typing.Any]
    token: str = dataclasses.field(repr=False, default="")

    def to_wire(self) -> dict:
        return {"v": PROTOCOL_VERSION, "id": self.id, "token": self.token, "op": self.op,
                "args": self.args}


@dataclasses.dataclass
class RemoteError:
    type: str
    message: str
    hint: str | None = None
    traceback: str = ""


@dataclasses.dataclass
class Response:
    id: int
    ok: bool
    result: typing.Any = None
    error: RemoteError | None = None

    def to_wire(self) -> dict:
        wire: dict = {"v": PROTOCOL_VERSION, "id": self.id, "ok": self.ok}
        if self.ok:
            wire["result"] = self.result
        else:
            wire["error"] = dataclasses.asdict(self.error) if self.error else None
        return wire


def jsonable(value: typing.Any) -> typing.Any:
    """Typed results (dataclasses, pydantic models, enums) as plain JSON data."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return jsonable(dataclasses.asdict(value))
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json")
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return value


def encode(message: dict) -> bytes:
    data = json.dumps(message, separators=(",", ":")).encode() + b"\n"
    if len(data) > MAX_MESSAGE_BYTES:
        raise errors.ProtocolError(f"Agent message of {len(data)} bytes is over the "
                                   f"{MAX_MESSAGE_BYTES}-byte limit.")
    return data


def _parse(line: bytes) -> dict:
    try:
        msg = json.loads(line)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise errors.ProtocolError(f"Malformed agent message: {exc}.") from exc
    if not isinstance(msg, dict):
        raise errors.ProtocolError("Malformed agent message: not a JSON object.")
    if msg.get("v") != PROTOCOL_VERSION:
        raise errors.ProtocolError(
            f"Agent protocol version {msg.get('v')!r} is not supported (this side speaks "
            f"version {PROTOCOL_VERSION}).", hint="Install the same cloudmig version on both sides.")
    return msg


def decode_request(line: bytes) -> Request:
    msg = _parse(line)
    op, args, rid = msg.get("op"), msg.get("args", {}), msg.get("id")
    if not isinstance(op, str) or not isinstance(args, dict) or not isinstance(rid, int):
        raise errors.ProtocolError("Malformed agent request: needs op (string), id (int), args (object).")
    return Request(id=rid, op=op, args=args, token=str(msg.get("token", "")))


def decode_response(line: bytes) -> Response:
    msg = _parse(line)
    if msg.get("ok"):
        return Response(id=msg.get("id", -1), ok=True, result=msg.get("result"))
    err = msg.get("error") or {}
    return Response(id=msg.get("id", -1), ok=False, error=RemoteError(
        type=str(err.get("type", "AgentError")), message=str(err.get("message", "")),
        hint=err.get("hint"), traceback=str(err.get("traceback", ""))))
