"""``_ns.link_index`` (an ioctl on the netlink socket, answered in that socket's namespace)
names the same interface index as the kernel's link listing, in the namespace the socket was
made in, and None for a name that namespace does not have."""

from __future__ import annotations

from netlab import lab  # noqa: F401  (fixture)

from cloudmig.network import _ns


def test_link_index_answers_in_the_sockets_namespace(lab):  # noqa: F811
    a = lab.hosts["a"]
    with _ns.iproute(a.netns, "listing links") as ipr:
        listed = {link.get_attr("IFLA_IFNAME"): link["index"] for link in ipr.get_links()}
        assert set(listed) >= {"lo", "wan0"}
        for name, index in listed.items():
            assert _ns.link_index(ipr, name) == index
        assert _ns.link_index(ipr, "no-such-link") is None
    with _ns.iproute(None, "listing links") as ipr:       # this process's own namespace
        assert "wan0" not in {link.get_attr("IFLA_IFNAME") for link in ipr.get_links()}
        assert _ns.link_index(ipr, "wan0") is None
