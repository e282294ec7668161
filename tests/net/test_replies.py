"""Replies leave through the tunnel their connection came in from (network/replies.py).

Three hosts: forwarders F1 (a) and F2 (b) publish port 8080 DNATed to service IP S and route S
into their own tunnel to D, where S lives; D publishes 8080 too. Clients in the root
namespace hold one connection to each public address at once: every answer comes back, each
client's peer is the address it dialled, and the server saw the client's own address.

Mid-stream: connections established to F1 while S lived on F1; then S's container namespace
(with its sockets: what CRIU would restore) is re-wired from F1 to D. D's conntrack first sees
them mid-stream; a client-first connection is marked by the tunnel and keeps working, a
server-first one is carried by the ``return_via`` fallback.
"""

from __future__ import annotations

import concurrent.futures
import json
import socket
import subprocess
import time

from pyroute2 import IPRoute

from cloudmig.network import _ns, addressing, pins, proxy, replies, routing, wireguard

from netlab import clean_up_through_library

SERVICE_PORT, PUBLIC_PORT = 8000, 8080
ROUNDS = 20
TIMEOUT_S = 3
SERVER_FIRST_WAIT_S = 1.5     # the server answers this late: after the move, before the client speaks

# Answers every line with "<label> <peer ip>:<peer port> <line>"; "wait S ..." sleeps S seconds first.
PEER_SERVER = """
    import socket, sys, threading, time
    ip, port, label = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((ip, port)); srv.listen(64)
    print("ready", flush=True)
    def serve(conn, peer):
        with conn, conn.makefile("rwb") as f:
            for line in f:
                words = line.split()
                if words[:1] == [b"wait"]:
                    time.sleep(float(words[1]))
                f.write(f"{label} {peer[0]}:{peer[1]} ".encode() + line); f.flush()
    while True:
        conn, peer = srv.accept()
        threading.Thread(target=serve, args=(conn, peer), daemon=True).start()
"""


class Client:
    """One held connection from the root namespace."""

    def __init__(self, address: tuple[str, int]):
        self.dialled = address
        self.sock = socket.create_connection(address, timeout=TIMEOUT_S)
        self.reader = self.sock.makefile("rb")
        self.me = "%s:%d" % self.sock.getsockname()

    def ask(self, text: str) -> str:
        self.sock.sendall(text.encode() + b"\n")
        return self.reader.readline().decode().strip()

    def close(self):
        self.reader.close()
        self.sock.close()


def forward(lab, host, tun_f, tun_d, service):
    """Host ``host`` forwards its public port to S, which lives behind ``tun_f``."""
    wireguard.add_allowed_ip(tun_f.ifname, tun_f.netns, tun_d.public_key, f"{service}/32")
    wireguard.add_allowed_ip(tun_d.ifname, tun_d.netns, tun_f.public_key, "0.0.0.0/0")
    routing.route_service(host.netns, service, tun_f.ifname)
    proxy.publish(host.netns, host.public_ip, PUBLIC_PORT, service, SERVICE_PORT, owner="web")


def nft_tables(netns: str) -> list[str]:
    out = subprocess.run(["nsenter", f"--net=/run/netns/{netns}", "nft", "-j", "list", "tables"],
                         capture_output=True, text=True, check=True).stdout
    return [i["table"]["name"] for i in json.loads(out)["nftables"] if "table" in i]


def conntrack_entry(netns: str, client: Client) -> str:
    """D's conntrack line for the client's connection (its original tuple may be either way)."""
    port = client.me.split(":")[1]
    lines = subprocess.run(["nsenter", f"--net=/run/netns/{netns}", "cat", "/proc/net/nf_conntrack"],
                           capture_output=True, text=True, check=True).stdout.splitlines()
    found = [line for line in lines if f"sport={port} " in line or f"dport={port} " in line]
    assert len(found) == 1, lines
    return found[0]


def test_each_connection_is_answered_the_way_it_came(lab):
    f1, f2, d = lab.hosts["a"], lab.hosts["b"], lab.add_host("d")
    t1f, t1d = lab.tunnel_pair("a", "d")
    t2f, t2d = lab.tunnel_pair("b", "d")
    service = str(addressing.service_ip(set()))
    lab.container("a", service)                  # where S lived before: forwarding needs ip_forward
    lab.container("b", service)
    link = lab.container("d", service)
    lab.start(link.container_netns, PEER_SERVER, service, str(SERVICE_PORT), "D")
    forward(lab, f1, t1f, t1d, service)
    forward(lab, f2, t2f, t2d, service)
    proxy.publish(d.netns, d.public_ip, PUBLIC_PORT, service, SERVICE_PORT, owner="web")

    id1 = replies.track_tunnel(d.netns, t1d.ifname)
    id2 = replies.track_tunnel(d.netns, t2d.ifname)
    assert id1 != id2 and replies.track_tunnel(d.netns, t1d.ifname) == id1      # idempotent
    assert {(t.ifname, t.mark_id) for t in replies.list_tracked(d.netns)} == {(t1d.ifname, id1),
                                                                           (t2d.ifname, id2)}

    def exchange(client: Client, tag: str) -> list[tuple[str, str]]:
        return [(client.ask(f"{tag} {i}"), f"D {client.me} {tag} {i}") for i in range(ROUNDS)]

    clients = [Client((host.public_ip, PUBLIC_PORT)) for host in (f1, f2, d)]
    try:
        with concurrent.futures.ThreadPoolExecutor(len(clients)) as pool:
            for tag in ("marks", "fallback"):
                results = list(pool.map(lambda c: exchange(c, tag), clients))
                for client, pairs in zip(clients, results):
                    assert [got for got, _ in pairs] == [want for _, want in pairs]
                    assert client.sock.getpeername() == client.dialled
                # a return_via rule for S (the fallback for unmarked connections) changes nothing
                # for marked ones nor for D's own (pinned to the main table)
                routing.return_via(d.netns, service, t1d.ifname)
        fresh = [Client((host.public_ip, PUBLIC_PORT)) for host in (f1, f2, d)]
        for client in fresh:
            assert client.ask("new") == f"D {client.me} new"
            client.close()
    finally:
        for client in clients:
            client.close()
    tracked = {t.ifname: t for t in replies.list_tracked(d.netns)}
    assert tracked[t1d.ifname].connections == 2 and tracked[t2d.ifname].connections == 2
    assert tracked[t1d.ifname].replies >= 2 * ROUNDS and tracked[t2d.ifname].replies >= 2 * ROUNDS

    # undo, idempotently; nothing of the reply paths is left
    assert routing.remove_return_via(d.netns, service)
    assert replies.untrack_tunnel(d.netns, t1d.ifname) and not replies.untrack_tunnel(d.netns, t1d.ifname)
    assert [t.ifname for t in replies.list_tracked(d.netns)] == [t2d.ifname]
    assert replies.untrack_tunnel(d.netns, t2d.ifname)
    assert not replies.remove_all(d.netns)
    assert "cloudmig_replies" not in nft_tables(d.netns)
    for host in (f1, f2, d):
        assert proxy.remove_all(host.netns)
    assert clean_up_through_library(lab) == []
    assert all(nft_tables(h.netns) == [] for h in (f1, f2, d))


def rewire(from_netns: str, to_netns: str, container_netns: str, service: str) -> None:
    """Move a container namespace's uplink (and with it its live sockets) to another host."""
    veth = routing.host_veth_name(container_netns)
    with IPRoute(netns=from_netns, flags=0) as ipr:
        ipr.link("del", index=ipr.link_lookup(ifname=veth)[0])
    with IPRoute(netns=to_netns, flags=0) as ipr:
        ipr.link("add", ifname=veth, kind="veth",
                 peer={"ifname": routing.CONTAINER_IFNAME, "net_ns_fd": container_netns})
        index = ipr.link_lookup(ifname=veth)[0]
        ipr.addr("add", index=index, address=routing.GATEWAY, prefixlen=32)
        ipr.link("set", index=index, state="up")
        ipr.route("replace", dst=f"{service}/32", oif=index)
    subprocess.run(["nsenter", f"--net=/run/netns/{to_netns}", "sysctl", "-q", "-w",
                    f"net.ipv4.conf.{veth}.rp_filter=0", f"net.ipv4.conf.{veth}.proxy_arp=1"], check=True)
    with IPRoute(netns=container_netns, flags=0) as ipr:
        index = ipr.link_lookup(ifname=routing.CONTAINER_IFNAME)[0]
        ipr.addr("add", index=index, address=service, prefixlen=32)
        ipr.link("set", index=index, state="up")
        ipr.route("replace", dst="0.0.0.0/0", gateway=routing.GATEWAY, oif=index,
                  flags=routing.RTNH_F_ONLINK)


def test_connections_established_before_the_move_continue(lab):
    f1, d = lab.hosts["a"], lab.hosts["b"]
    tf, td = lab.tunnel_pair("a", "b")
    service = str(addressing.service_ip(set()))
    link = lab.container("a", service)
    lab.start(link.container_netns, PEER_SERVER, service, str(SERVICE_PORT), "C")
    proxy.publish(f1.netns, f1.public_ip, PUBLIC_PORT, service, SERVICE_PORT, owner="web")
    public = (f1.public_ip, PUBLIC_PORT)
    client_first, server_first = Client(public), Client(public)
    try:
        for client in (client_first, server_first):
            assert client.ask("before") == f"C {client.me} before"
        server_first.sock.sendall(f"wait {SERVER_FIRST_WAIT_S} late\n".encode())
        time.sleep(0.3)                                  # the request is ACKed while S is on F1

        # the move: D marks what comes through the tunnel; F1 routes S into it
        wireguard.add_allowed_ip(tf.ifname, tf.netns, td.public_key, f"{service}/32")
        wireguard.add_allowed_ip(td.ifname, td.netns, tf.public_key, "0.0.0.0/0")
        mark_id = replies.track_tunnel(d.netns, td.ifname)
        routing.return_via(d.netns, service, td.ifname)      # fallback for what no tunnel marked
        rewire(f1.netns, d.netns, link.container_netns, service)
        lab.containers.append((d.netns, link.container_netns))
        routing.route_service(f1.netns, service, tf.ifname)

        # client first: D's conntrack picks the connection up from the tunnel and marks it
        answers = [client_first.ask(f"after {i}") for i in range(ROUNDS)]
        assert answers == [f"C {client_first.me} after {i}" for i in range(ROUNDS)]
        assert client_first.sock.getpeername() == public
        entry = conntrack_entry(d.netns, client_first)
        assert entry.split()[6:8] == [f"src={client_first.me.split(':')[0]}", f"dst={service}"]
        assert f"mark={replies.mark_of(mark_id)} " in entry and "[UNREPLIED]" not in entry
        print(f"\nD conntrack, client first: {entry}")

        # server first: D's first packet of it comes from S, unmarked; return_via carries it
        server_first.sock.settimeout(SERVER_FIRST_WAIT_S + 2 * TIMEOUT_S)
        assert server_first.reader.readline().decode().strip() == \
            f"C {server_first.me} wait {SERVER_FIRST_WAIT_S} late"
        assert server_first.ask("again") == f"C {server_first.me} again"
        entry = conntrack_entry(d.netns, server_first)        # the client's packets: not invalid
        assert entry.split()[6] == f"src={service}" and "[ASSURED] mark=0 " in entry
        print(f"D conntrack, server first: {entry}")
        assert client_first.ask("still") == f"C {client_first.me} still"
    finally:
        client_first.close()
        server_first.close()
    tracked = replies.list_tracked(d.netns)
    assert [(t.ifname, t.connections) for t in tracked] == [(td.ifname, 1)]
    assert tracked[0].replies >= ROUNDS
    assert replies.remove_all(d.netns) and not replies.remove_all(d.netns)
    assert routing.remove_return_via(d.netns, service)
    assert "cloudmig_replies" not in nft_tables(d.netns)


def test_concurrent_changes_on_one_host_all_land(lab):
    """Two migrations at once on one host (a plan's wave) each track the tunnel they arrive
    through, publish their ports and pin their clients: every call succeeds and the host ends
    with one set of each, as if they had run one after the other."""
    d = lab.hosts["b"]
    _, tun = lab.tunnel_pair("a", "b")
    service = str(addressing.service_ip(set()))
    n = 8

    def one(i: int) -> int:
        proxy.publish(d.netns, d.public_ip, PUBLIC_PORT + i, service, SERVICE_PORT, owner=f"c{i}")
        pins.pin(d.netns, service, [pins.Pin(tunnel_ifname=tun.ifname, client_ip="198.51.100.7",
                                             client_port=40000 + i, service_port=SERVICE_PORT)])
        return replies.track_tunnel(d.netns, tun.ifname)

    for _ in range(3):
        with concurrent.futures.ThreadPoolExecutor(n) as pool:
            ids = set(pool.map(one, range(n)))
        assert len(ids) == 1 and [t.ifname for t in replies.list_tracked(d.netns)] == [tun.ifname]
        chain = [r for r in _ns.nft_rules(d.netns, replies.FAMILY, replies.TABLE) if "tunnel=" in r.get("comment", "")]
        assert len(chain) == 2, chain                  # its ingress and reply rules, once
        [mark_id] = ids
        with IPRoute(netns=d.netns, flags=0) as ipr:
            rules = [r for r in ipr.get_rules(family=2) if r.get("fwmark") == replies.mark_of(mark_id)]
        assert len(rules) == 1, rules
        assert sorted(f.host_port for f in proxy.list_forwards(d.netns)) == [PUBLIC_PORT + i for i in range(n)]
        with concurrent.futures.ThreadPoolExecutor(n) as pool:
            list(pool.map(lambda i: proxy.unpublish(d.netns, owner=f"c{i}"), range(n)))
        assert proxy.list_forwards(d.netns) == []
        assert pins.unpin(d.netns, service) == n
        assert replies.untrack_tunnel(d.netns, tun.ifname)     # the next round tracks it afresh
        assert replies.list_tracked(d.netns) == []
    assert clean_up_through_library(lab) == []
