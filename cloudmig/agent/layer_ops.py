"""The agent's image-layer operations: what this host's store has, and layers coming in or
going out (cloudmig.runtime.layer_store keeps them; cloudmig.control.layers drives these).

    ops = LayerOps(Path("/var/lib/cloudmig/hosts/h1/layers"))
    ops.missing(digests=["sha256:3f2a..."])                       # -> ["sha256:3f2a..."]
    ops.put(digest="sha256:3f2a...", data=b64, offset=0, done=False)  # -> {"upload": "up-...", ...}
    rx = ops.receive(bind_address="100.64.0.2")                   # destination: {"port", "token"}
    ops.send(digests=[...], address="100.64.0.2", port=rx["port"], token=rx["token"])   # source
    ops.receive_wait(token=rx["token"])                           # destination: {"bytes": N, ...}

From the controller, a layer arrives in base64 chunks appended to a temporary file
(``layers.put``; the JSON channel carries at most 16 MiB a message); between hosts, the
layers' files travel through the tunnel into a one-time receiver. Either way the host checks
each layer's digest, unpacks it and renames it into its store at once, whole; a layer it
has already is not installed again. The operations keep nothing that an agent restart
would lose except the receivers of transfers under way.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
import shutil
import threading
from pathlib import Path
from typing import Any, Callable

from cloudmig import errors
from cloudmig.runtime import layer_store, transfer

UPLOAD_RE = re.compile(r"^up-[0-9a-f]{12}-[A-Za-z0-9_]+$")


class LayerOps:
    def __init__(self, store_root: Path) -> None:
        self.store = layer_store.LayerStore(store_root)
        self._receivers: dict[str, tuple[transfer.Receiver, Path, list[str]]] = {}
        self._lock = threading.Lock()

    def handlers(self) -> dict[str, Callable[..., Any]]:
        return {
            "layers.missing": self.missing,
            "layers.put": self.put,
            "layers.put_abort": self.put_abort,
            "layers.receive": self.receive,
            "layers.receive_wait": self.receive_wait,
            "layers.receive_cancel": self.receive_cancel,
            "layers.send": self.send,
        }

    # ------------------------------------------------------------------ what is here
    def missing(self, digests: list[str]) -> list[str]:
        """The digests of ``digests`` this host's store lacks (in order, each once)."""
        return self.store.missing(list(digests))

    # ------------------------------------------------------------------ from the controller
    def put(self, digest: str, data: str, offset: int = 0, upload: str | None = None,
            done: bool = False) -> dict:
        """Append one chunk (base64 ``data`` at byte ``offset``) of layer ``digest``; the first
        chunk (no ``upload``) opens an upload and names it. With ``done``, the layer is verified,
        unpacked and put into the store. ``present``: the store has the layer already (the
        sender stops); ``stored``: the layer is in the store now."""
        hexd = layer_store.check_digest(digest)
        try:
            raw = base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise errors.ProtocolError(f"layers.put got data that is not base64 ({exc}).") from exc
        if upload is None:
            if offset != 0:
                raise errors.ProtocolError("layers.put: the first chunk of an upload is at offset 0.")
            if self.store.has(digest):
                return {"upload": None, "bytes": 0, "present": True, "stored": True}
            self.store.sweep()
            up = self.store.temp_dir(f"up-{hexd[:12]}-")
        else:
            if not isinstance(upload, str) or not UPLOAD_RE.match(upload) or not upload.startswith(f"up-{hexd[:12]}-"):
                raise errors.ProtocolError(f"layers.put: {upload!r} is not an upload of layer {digest}.")
            up = self.store.incoming / upload
            if not up.is_dir():
                raise errors.ContainerError(f"Upload {upload} of layer {digest} is gone from this host "
                                            "(aborted, or swept as stale).", hint="Run the command again.")
        blob = up / "blob"
        with open(blob, "ab") as fh:
            if fh.tell() != offset:    # a chunk lost or sent twice: the sender may resend from here
                raise errors.ProtocolError(f"layers.put: chunk at byte {offset} of layer {digest}, "
                                           f"but the host has {fh.tell()} bytes of it.")
            fh.write(raw)
            size = fh.tell()
        if not done:
            return {"upload": up.name, "bytes": size, "present": False, "stored": False}
        try:
            self.store.install(blob, digest)
        finally:
            shutil.rmtree(up, ignore_errors=True)
        return {"upload": up.name, "bytes": size, "present": False, "stored": True}

    def put_abort(self, upload: str) -> None:
        """Drop an unfinished upload (the controller gave up on it)."""
        if not isinstance(upload, str) or not UPLOAD_RE.match(upload):
            raise errors.ProtocolError(f"layers.put_abort: {upload!r} is not an upload.")
        shutil.rmtree(self.store.incoming / upload, ignore_errors=True)

    # ------------------------------------------------------------------ between hosts
    def receive(self, bind_address: str, digests: list[str] | None = None) -> dict:
        """Destination: listen on ``bind_address`` (this host's tunnel address) for one
        ``layers.send``; ``digests``, if given, are the layers that must arrive."""
        expected = list(digests or [])
        for d in expected:
            layer_store.check_digest(d)
        dest = self.store.temp_dir("rx-")
        try:
            rx = transfer.Receiver.start(dest, bind_address)
        except BaseException:
            shutil.rmtree(dest, ignore_errors=True)
            raise
        with self._lock:
            self._receivers[rx.token] = (rx, dest, expected)
        return {"port": rx.port, "token": rx.token}

    def _take(self, token: str | None) -> tuple[transfer.Receiver, Path, list[str]]:
        with self._lock:
            if token is None:
                if len(self._receivers) != 1:
                    raise errors.ConfigError(f"{len(self._receivers)} layer transfers are open on this "
                                             "host: name one by its token.")
                token = next(iter(self._receivers))
            entry = self._receivers.pop(token, None)
        if entry is None:
            raise errors.ConfigError("No layer transfer with that token is open on this host.",
                                     hint="Open one with layers.receive first.")
        return entry

    def receive_wait(self, token: str | None = None) -> dict:
        """Destination: wait for the transfer, then verify and install every layer that came.
        Returns ``{"bytes": N, "installed": [digests new to this store]}``."""
        rx, dest, expected = self._take(token)
        try:
            received = rx.wait()
            installed = []
            for f in sorted(dest.iterdir()):
                digest = f"sha256:{f.name}"
                if not layer_store.DIGEST_RE.match(digest):
                    raise errors.MigrationError(f"A layer transfer brought a file {f.name!r}, which names no layer.")
                if self.store.install(f, digest):
                    installed.append(digest)
            absent = self.store.missing(expected)
            if absent:
                raise errors.MigrationError(f"Layer {absent[0]} did not arrive ({len(absent)} missing).",
                                            hint="See the source host's agent log.")
        finally:
            shutil.rmtree(dest, ignore_errors=True)
        return {"bytes": received, "installed": installed}

    def receive_cancel(self, token: str) -> None:
        """Destination: give up a transfer (the sender failed)."""
        try:
            rx, dest, _ = self._take(token)
        except errors.ConfigError:
            return
        rx.cancel()
        shutil.rmtree(dest, ignore_errors=True)

    def send(self, digests: list[str], address: str, port: int, token: str) -> dict:
        """Source: send layers ``digests`` from this store to a ``layers.receive`` at
        ``address``:``port`` (through the tunnel). Returns ``{"bytes": N}``."""
        wanted = list(dict.fromkeys(digests))
        absent = self.store.missing(wanted)
        if absent:
            raise errors.ContainerError(f"Layer {absent[0]} is not on this host, so it cannot send it.")
        flat = self.store.temp_dir("tx-")
        try:
            for d in wanted:     # hard links: a flat directory of the blobs, nothing copied
                os.link(self.store.blob(d), flat / layer_store.check_digest(d))
            return {"bytes": transfer.send_files(flat, address, port, token)}
        finally:
            shutil.rmtree(flat, ignore_errors=True)
