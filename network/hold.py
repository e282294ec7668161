"""Hold a service's packets while its container is frozen, and let them go into the new path.

    hold = Hold.start("db", service_ip="100.96.0.1", endpoints=[("198.18.0.11", 16379, "tcp")])
    ...                     # the freeze: packets to the service wait in the kernel, not dropped
    hold.release()          # after the switch: they continue, routed to the new home
    hold.wait_closed()      # (the rules go and the queue closes off the release's path)

Without it, a packet that reaches the frozen container is dropped and its client waits for
TCP's retransmission (200 ms at least, doubling). iptables' NFQUEUE target (this kernel has
it; ``nft queue`` and the ``plug`` qdisc it has not) queues the packets in the mangle table's
PREROUTING, before DNAT and routing, so that a packet let go after the switch is routed like
a new one: into the tunnel. The queue is read over a NETLINK_NETFILTER socket of our own
(network/_nfqueue.py).

Failing open: the rules carry ``--queue-bypass`` (no reader: packets pass) and the queue
``FAIL_OPEN`` (full: packets pass); if the holder dies, the kernel drops what it held (the
clients retransmit, as without a hold) and lets the rest through. ``release_orphans``
removes the rules a dead holder left.
"""

from __future__ import annotations

import logging
import shlex
import socket
import subprocess
import threading

from cloudmig import errors
from cloudmig.network import _nfqueue as nfqueue, _ns

log = logging.getLogger(__name__)

__all__ = ["Hold", "release_orphans"]

QUEUE_MAXLEN = 8192            # packets held at most; more pass (fail open)
READER_POLL_S = 0.05           # the reader looks whether it should stop this often
COMMENT = "cloudmig hold {name}"


def _iptables(action: str, rule: list[str]) -> subprocess.CompletedProcess:
    return nfqueue.prerouting(action, rule, f"changing the hold rules ({action})")


def _iptables_batch(action: str, rules: list[list[str]]) -> subprocess.CompletedProcess:
    """Every rule in one iptables-restore run (all or none): each iptables process costs
    ~10 ms here, most of it closing its netlink socket."""
    quote = lambda arg: f'"{arg}"' if " " in arg else arg          # noqa: E731
    script = "*mangle\n" + "".join(f"{action} PREROUTING {' '.join(map(quote, rule))}\n"
                                    for rule in rules) + "COMMIT\n"
    return _ns.run(None, [_ns.need_tool("iptables-restore", "iptables"), "-w", "--noflush"],
                   f"changing the hold rules ({action})", input=script, check=False)


class Hold:
    def __init__(self, name: str, sock: socket.socket, queue: int, rules: list[list[str]]) -> None:
        self.name, self._sock, self.queue, self._rules = name, sock, queue, rules
        self._last_id = 0              # the highest packet id queued so far
        self.held = 0
        self._passing = False          # released: the reader lets each packet go at once
        self._stop = threading.Event()
        self._closed: threading.Thread | None = None
        self._sock.settimeout(READER_POLL_S)
        self._reader = threading.Thread(target=self._read, name=f"hold-{name}", daemon=True)
        self._reader.start()

    @classmethod
    def start(cls, name: str, service_ip: str, endpoints: list[tuple[str, int, str]],
              not_from: str | None = None) -> "Hold":
        """Queue packets to each public (address, port, proto) of the container and to
        ``service_ip`` (forwarded through tunnels by hosts the container left), in this
        network namespace; except those coming in on ``not_from``: the tunnel from the
        destination, whose own forwarded packets must not be sent back to it (it made their
        NAT, and a packet coming back would meet its own conntrack entry)."""
        sock, queue = nfqueue.open_queue(name, QUEUE_MAXLEN)
        target = ["-m", "comment", "--comment", COMMENT.format(name=name),
                  "-j", "NFQUEUE", "--queue-num", str(queue), "--queue-bypass"]
        rules = [["-d", f"{service_ip}/32", *(["!", "-i", not_from] if not_from else []), *target]]
        rules += [["-d", f"{address}/32", "-p", proto, "--dport", str(port), *target]
                  for address, port, proto in endpoints]
        hold = cls(name, sock, queue, [])
        res = _iptables_batch("-I", rules)
        if res.returncode != 0:
            hold.release()
            raise errors.NetworkError(f"Cannot hold the packets of {name}: iptables says "
                                      f"{res.stderr.strip()}", hint="Run `cloudmig doctor` on the source host.")
        hold._rules = rules
        return hold

    def _read(self) -> None:
        while not self._stop.is_set():
            try:
                data = self._sock.recv(1 << 16)
            except socket.timeout:
                continue
            except OSError:
                return
            for packet_id in nfqueue.packet_ids(data):
                self._last_id = max(self._last_id, packet_id)
                self.held += 1
                if self._passing:       # after the release (see release)
                    self._accept_all()

    def _accept_all(self) -> None:
        if self._last_id:
            nfqueue.accept_upto(self._sock, self.queue, self._last_id)

    def release(self) -> int:
        """Let every held packet go on (routed as it is now), stop holding. Returns how many
        were held. The held ones go first; packets that still reach the queue while its rules
        are removed are let go by the reader as they come (``_passing`` is set before the
        batch verdict reads ``_last_id``, and the reader sets ``_last_id`` before it reads
        ``_passing``: every packet is let go by one or the other)."""
        self._passing = True
        self._accept_all()
        # the rules go off this path: iptables-restore costs 15-50 ms of CPU here, at the very
        # moment the container answers its first request on its new host; until they are gone
        # the reader lets each packet go as it comes
        # not a daemon: a holder that exits waits for its rules to go
        self._closed = threading.Thread(target=self._close, name=f"unhold-{self.name}")
        self._closed.start()
        return self.held

    def wait_closed(self, timeout_s: float | None = None) -> None:
        """After :meth:`release`: until the rules are gone and the queue is closed."""
        if self._closed is not None:
            self._closed.join(timeout_s)

    def _close(self) -> None:
        try:
            if self._rules:
                res = _iptables_batch("-D", self._rules)
                if res.returncode != 0:
                    log.warning("the hold rules of %s stay (they let packets pass): %s",
                                self.name, res.stderr.strip())
            self._rules = []
            self._accept_all()        # any the reader had not seen yet
        finally:
            # the queue is the socket's until it is closed, and a socket a thread still reads
            # stays open: the reader stops first (within READER_POLL_S)
            self._stop.set()
            self._reader.join()
            self._sock.close()


def release_orphans(name: str) -> int:
    """Remove the hold rules a dead holder of ``name`` left (they let packets pass already)."""
    listing = _iptables("-S", []).stdout
    removed = 0
    for line in listing.splitlines():
        if f'"{COMMENT.format(name=name)}"' in line and line.startswith("-A PREROUTING "):
            _iptables("-D", shlex.split(line[len("-A PREROUTING "):]))
            removed += 1
    return removed
