"""Sending image layers to hosts: from the controller over the agent channel, or from host
to host through their tunnel.

    shipped = layers.ship(agent, "h1", images.resolve("web.tar", work))
    shipped.layers, shipped.bytes              # 0, 0 when h1 had every layer already
    layers.copy_between(src, dst, digests, dst_address="100.64.0.2")   # a migration's prepare

The agent channel carries JSON lines of at most 16 MiB (cloudmig.agent.protocol), so a layer
travels in base64 chunks (``layers.put``); the host appends them to a temporary file, checks
the digest, unpacks, and renames the layer into its store (cloudmig.agent.layer_ops). Only
the layers the host lacks are sent, so sending an image twice sends nothing the second time.
Between hosts, layers take the tunnel (a cloudmig.runtime.transfer Receiver), never the
controller.
"""

from __future__ import annotations

import base64
import dataclasses
import logging
import typing
from typing import Callable, Sequence

from cloudmig import errors
from cloudmig.runtime import images

log = logging.getLogger(__name__)

CHUNK_BYTES = 4 * 1024 * 1024               # base64 makes 5.3 MiB of it: well under 16 MiB
PROGRESS_EVERY_BYTES = 64 * 1024 * 1024     # a layer this big says how far it got at each step
MIB = 1024 * 1024

Progress = Callable[[str], None]


class Caller(typing.Protocol):
    """An agent channel (cloudmig.agent.client.AgentClient)."""
    def call(self, op: str, **args: typing.Any) -> typing.Any: ...


@dataclasses.dataclass
class Shipped:
    layers: int = 0         # layers sent
    bytes: int = 0          # bytes of those layers, as sent (compressed if they were)


def ship(agent: Caller, host: str, layers: Sequence[images.Layer],
         progress: Progress | None = None) -> Shipped:
    """Send ``host`` the layers of ``layers`` it lacks, over its agent channel."""
    say = progress or (lambda _msg: None)
    by_digest = {layer.digest: layer for layer in layers}
    missing = agent.call("layers.missing", digests=list(by_digest)) if by_digest else []
    shipped = Shipped()
    for digest in missing:
        layer = by_digest[digest]
        say(f"{host}: sending layer {digest[7:19]} ({layer.size / MIB:.1f} MiB)")
        if _put(agent, host, layer, say):
            shipped.layers += 1
            shipped.bytes += layer.size
    log.info("sent %d of %d layers (%d bytes) to %s", shipped.layers, len(by_digest), shipped.bytes, host)
    return shipped


def _put(agent: Caller, host: str, layer: images.Layer, say: Progress) -> bool:
    """One layer in chunks; False if the host turned out to have it (another upload won)."""
    upload = None
    offset = 0
    next_report = PROGRESS_EVERY_BYTES
    try:
        with open(layer.blob, "rb") as fh:
            while True:
                chunk = fh.read(CHUNK_BYTES)
                done = len(chunk) < CHUNK_BYTES
                res = agent.call("layers.put", digest=layer.digest, upload=upload, offset=offset,
                                 data=base64.b64encode(chunk).decode(), done=done)
                if res.get("present"):
                    return False
                upload = res["upload"]
                offset += len(chunk)
                if done:
                    return True
                if offset >= next_report and layer.size >= PROGRESS_EVERY_BYTES:
                    say(f"{host}: layer {layer.digest[7:19]}: {offset / MIB:.0f} of {layer.size / MIB:.0f} MiB")
                    next_report += PROGRESS_EVERY_BYTES
    except OSError as exc:
        raise errors.ContainerError(f"Cannot read layer {layer.blob}: {exc.strerror or exc}.") from exc
    except BaseException:
        if upload is not None:      # best effort: the host sweeps old uploads anyway
            try:
                agent.call("layers.put_abort", upload=upload)
            except errors.CloudmigError:
                pass
        raise


def copy_between(src: Caller, dst: Caller, digests: Sequence[str], dst_address: str) -> int:
    """Send host ``dst`` the layers of ``digests`` it lacks, from host ``src``, through their
    tunnel (``dst_address``: the destination's tunnel address). Returns the bytes sent."""
    missing = dst.call("layers.missing", digests=list(digests)) if digests else []
    if not missing:
        return 0
    rx = dst.call("layers.receive", bind_address=dst_address, digests=missing)
    try:
        src.call("layers.send", digests=missing, address=dst_address, port=rx["port"], token=rx["token"])
    except BaseException:
        try:
            dst.call("layers.receive_cancel", token=rx["token"])
        except errors.CloudmigError:
            pass
        raise
    return int(dst.call("layers.receive_wait", token=rx["token"])["bytes"])
