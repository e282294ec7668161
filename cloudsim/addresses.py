"""Public addresses the simulated clouds hand out: only from the lab's range, 198.18.0.0/15.

    pool = AddressPool("198.19.0.0/16")
    pool.take()          # '198.19.0.1', then '198.19.0.2', ...
"""

from __future__ import annotations

import ipaddress
import threading

LAB_RANGE = ipaddress.ip_network("198.18.0.0/15")
DEFAULT_POOL = "198.19.0.0/16"     # the lab's own hosts use 198.18.X.0/24: no overlap


class AddressPool:
    def __init__(self, cidr: str = DEFAULT_POOL, first: int = 1) -> None:
        net = ipaddress.ip_network(cidr)
        if not net.subnet_of(LAB_RANGE):
            raise ValueError(f"simulated public addresses must lie in {LAB_RANGE}, not {net}")
        self._net = net
        self._next = first
        self._lock = threading.Lock()

    def take(self) -> str:
        with self._lock:
            if self._next >= self._net.num_addresses - 1:
                raise RuntimeError(f"the simulated address pool {self._net} is exhausted")
            address = self._net[self._next]
            self._next += 1
            return str(address)
