"""netns=None means "the namespace this process runs in" — how the host agent calls the library.

A child process enters host A's namespace and calls everything with netns=None; the test then
inspects the result from outside with netns=A, and the child tears it all down again.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

from cloudmig.network import proxy, routing, wireguard

from netlab import leftovers

AGENT = """
    import sys
    from pathlib import Path
    from cloudmig.network import keys, proxy, routing, wireguard
    step, container, public_ip, ifname, key_dir = sys.argv[1:6]
    key_file = Path(key_dir) / "k.key"
    if step == "up":
        peer = keys.public_key(keys.generate())
        keys.create(key_file)
        wireguard.up(ifname, None, key_file, 51830, "100.64.0.1/32",
                     peers=[wireguard.Peer(peer, public_ip.rsplit(".", 1)[0] + ".99:51820",
                                           ["100.64.0.2/32"])])
        routing.create_container_netns(None, container, "100.96.0.3")
        proxy.publish(None, public_ip, 8080, "100.96.0.3", 80, owner="web")
        routing.route_service(None, "100.96.0.3", ifname)
        routing.return_via(None, "100.96.0.3", ifname)
    else:
        routing.remove_return_via(None, "100.96.0.3")
        proxy.remove_all(None)
        routing.delete_container_netns(None, container)
        wireguard.down(ifname, None, key_file)
"""


def as_agent(lab, step: str, container: str, ifname: str, key_dir) -> None:
    a = lab.hosts["a"]
    subprocess.run(["nsenter", f"--net=/run/netns/{a.netns}", sys.executable, "-c",
                    textwrap.dedent(AGENT), step, container, a.public_ip, ifname, str(key_dir)],
                   check=True, timeout=60)


def test_agent_style_calls_in_the_current_namespace(lab, tmp_path):
    a = lab.hosts["a"]
    container, ifname = f"{lab.prefix}c0", wireguard.interface_name(a.netns, "elsewhere")
    lab.containers.append((a.netns, container))
    try:
        as_agent(lab, "up", container, ifname, tmp_path)
        assert wireguard.status(ifname, a.netns).listen_port == 51830
        assert [f.owner for f in proxy.list_forwards(a.netns)] == ["web"]
        assert routing.remove_return_via(a.netns, "100.96.0.3")        # it was there
        routing.return_via(a.netns, "100.96.0.3", ifname)
    finally:
        as_agent(lab, "down", container, ifname, tmp_path)
    assert leftovers(lab) == [] and not (tmp_path / "k.key").exists()
    assert not wireguard.down(ifname, a.netns)
