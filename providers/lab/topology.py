"""The lab's wiring on this machine: a bridge in the root namespace (the lab's "internet")
and one network namespace per host, each with a public address on that bridge.

    topo = Topology.current()                 # names from $CLOUDMIG_LAB_ID (default "cm")
    topo.ensure_bridge()
    topo.add_host("h1", index=1, rate_bps=None)
    topo.public_address(1)                    # '198.18.X.11'

Addresses come from 198.18.0.0/15 (reserved for benchmarking, routed nowhere). The lab never
gets a default route and no NAT: nothing in it can reach the real network.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import zlib
from pathlib import Path

from pyroute2 import IPRoute, netns
from pyroute2.netlink.exceptions import NetlinkError

from cloudmig import errors
from cloudmig.network import _ns

log = logging.getLogger(__name__)

NETNS_DIR = Path("/run/netns")
LAB_ID_RE = re.compile(r"^[a-z][a-z0-9]{0,3}$")
HOST_NAME_RE = re.compile(r"^h[0-9]{1,2}$")
WAN_PREFIX_LEN = 24
HOST_ADDRESS_OFFSET = 10          # h1 gets .11, h2 .12, ...
TBF_LATENCY_MS = 50               # queueing the shaper allows before it drops
TBF_MIN_BURST_BYTES = 16 * 1024
SOURCE_CHECK_TABLE = "cloudmig_lab"


def lab_id() -> str:
    value = os.environ.get("CLOUDMIG_LAB_ID", "cm")
    if not LAB_ID_RE.match(value):
        raise errors.ConfigError(f"CLOUDMIG_LAB_ID={value!r} must be 1-4 lowercase letters/digits, "
                                 "starting with a letter.")
    return value


def parse_rate(text: str) -> int:
    """'100mbit' -> bits per second. Units: bit, kbit, mbit, gbit (tc's)."""
    m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*(bit|kbit|mbit|gbit)?\s*", text.lower())
    if not m:
        raise errors.ConfigError(f"--wan-rate {text!r} is not a rate.",
                                 hint="Use a number with bit, kbit, mbit or gbit, e.g. 200mbit.")
    scale = {"bit": 1, None: 1, "kbit": 10**3, "mbit": 10**6, "gbit": 10**9}[m.group(2)]
    bps = int(float(m.group(1)) * scale)
    if bps < 8000:
        raise errors.ConfigError(f"--wan-rate {text!r} is too low (minimum 8kbit).")
    return bps


@dataclasses.dataclass
class Topology:
    lab: str

    @classmethod
    def current(cls) -> "Topology":
        return cls(lab_id())

    # ---------------------------------------------------------------- names
    @property
    def bridge(self) -> str:
        return f"{self.lab}-wan"

    @property
    def subnet_octet(self) -> int:
        # 198.18.X.0/24 with X from the lab id, so a test lab never collides with the default one
        return 1 + zlib.crc32(self.lab.encode()) % 200

    @property
    def bridge_address(self) -> str:
        return f"198.18.{self.subnet_octet}.1"

    def public_address(self, index: int) -> str:
        return f"198.18.{self.subnet_octet}.{HOST_ADDRESS_OFFSET + index}"

    def host_netns(self, host: str) -> str:
        return f"{self.lab}-{host}"

    def host_veth(self, host: str) -> str:
        return f"{self.lab}-{host}-w"

    def owns_netns(self, name: str) -> bool:
        return name.startswith(f"{self.lab}-")

    # ---------------------------------------------------------------- bridge
    def ensure_bridge(self) -> bool:
        """Create the WAN bridge if missing; True if it was created."""
        with IPRoute() as ipr:
            if ipr.link_lookup(ifname=self.bridge):
                return False
            ipr.link("add", ifname=self.bridge, kind="bridge")
            idx = ipr.link_lookup(ifname=self.bridge)[0]
            ipr.addr("add", index=idx, address=self.bridge_address, prefixlen=WAN_PREFIX_LEN)
            ipr.link("set", index=idx, state="up")
        log.info("lab bridge %s up with %s/%d", self.bridge, self.bridge_address, WAN_PREFIX_LEN)
        return True

    def remove_bridge(self) -> None:
        with IPRoute() as ipr:
            for idx in ipr.link_lookup(ifname=self.bridge):
                ipr.link("del", index=idx)

    # ---------------------------------------------------------------- hosts
    def host_exists(self, host: str) -> bool:
        return (NETNS_DIR / self.host_netns(host)).exists()

    def add_host(self, host: str, index: int, rate_bps: int | None) -> None:
        ns, veth = self.host_netns(host), self.host_veth(host)
        netns.create(ns)
        try:
            with IPRoute() as ipr:
                ipr.link("add", ifname=veth, kind="veth", peer={"ifname": "wan0", "net_ns_fd": ns})
                idx = ipr.link_lookup(ifname=veth)[0]
                br = ipr.link_lookup(ifname=self.bridge)[0]
                ipr.link("set", index=idx, master=br, state="up")
                if rate_bps:
                    self._shape(ipr, idx, rate_bps)
            with IPRoute(netns=ns) as ipr:
                lo = ipr.link_lookup(ifname="lo")[0]
                ipr.link("set", index=lo, state="up")
                wan = ipr.link_lookup(ifname="wan0")[0]
                ipr.addr("add", index=wan, address=self.public_address(index), prefixlen=WAN_PREFIX_LEN)
                ipr.link("set", index=wan, state="up")
                if rate_bps:
                    self._shape(ipr, wan, rate_bps)
            # a host routes between its containers, tunnels and WAN; replies of forwarded
            # connections may come back on another interface than they left (see docs/network.md)
            _ns.sysctl(ns, {"net.ipv4.ip_forward": "1", "net.ipv4.conf.all.rp_filter": "0",
                            "net.ipv4.conf.default.rp_filter": "0"})
            self._source_check(ns, self.public_address(index))
        except (NetlinkError, OSError, errors.NetworkError) as exc:
            self.remove_host(host)
            raise errors.ProviderError(f"Could not wire lab host {host}: {exc}.") from exc

    @staticmethod
    def _source_check(ns: str, address: str) -> None:
        """Like a cloud's network (EC2's source/destination check, Azure's IP forwarding off),
        the lab's drops what a host sends with a source other than its own address: a reply
        sent back by another host than the one that NATed it gets through a shared bridge, but
        not through a real network (counted, for tests: ``nft list table ip cloudmig_lab``)."""
        rules = (f"add table ip {SOURCE_CHECK_TABLE}\n"
                 f"add chain ip {SOURCE_CHECK_TABLE} out "
                 f"{{ type filter hook postrouting priority srcnat + 10; policy accept; }}\n"
                 f"add rule ip {SOURCE_CHECK_TABLE} out oifname \"wan0\" ip saddr != {address} "
                 f"counter drop comment \"source check\"\n")
        _ns.nft(ns, ["-f", "-"], "dropping what does not come from the host's own address", script=rules)

    @staticmethod
    def _shape(ipr: IPRoute, index: int, rate_bps: int) -> None:
        rate_Bps = rate_bps // 8
        # burst: at least one timer tick of data at this rate (and a few full-size packets)
        burst = max(TBF_MIN_BURST_BYTES, rate_Bps // 250)
        ipr.tc("add", "tbf", index=index, rate=rate_Bps, burst=burst, latency=TBF_LATENCY_MS * 1000)

    def remove_host(self, host: str) -> None:
        with IPRoute() as ipr:
            for idx in ipr.link_lookup(ifname=self.host_veth(host)):
                try:
                    ipr.link("del", index=idx)
                except NetlinkError:
                    pass
        ns = self.host_netns(host)
        if (NETNS_DIR / ns).exists():
            netns.remove(ns)

    def leftover_netns(self) -> list[str]:
        if not NETNS_DIR.exists():
            return []
        return sorted(p.name for p in NETNS_DIR.iterdir() if self.owns_netns(p.name))
