"""The network lock of a frozen container's namespace (network/lock.py): locked, nothing
reaches it; unlocked (over netlink, network/_nftnl.py), a client is answered again on the
connection it held; unlocking twice, or a namespace without a lock, says there was none.
Armed before the freeze, the lock drops nothing until it is woken (over netlink)."""

from __future__ import annotations

import select

import pytest

from netlab import lab, served_client  # noqa: F401  (fixture)

from cloudmig.network import _nftnl, lock


def test_a_locked_namespace_answers_again_once_unlocked_and_unlock_is_idempotent(lab):  # noqa: F811
    a = lab.hosts["a"]
    client, f = served_client(lab, a, 7200)

    lock.lock(a.netns)
    try:
        assert lock.is_locked(a.netns)
        f.write(b"during\n"); f.flush()
        ready, _, _ = select.select([client], [], [], 0.5)
        assert not ready, "a locked namespace answered"
    finally:
        assert lock.unlock(a.netns) is True
    assert not lock.is_locked(a.netns)
    assert f.readline() == b"svc during\n"     # TCP resent it: the same connection goes on
    assert lock.unlock(a.netns) is False       # nothing to unlock
    client.close()


def test_an_armed_lock_drops_nothing_until_woken_and_a_full_lock_replaces_it(lab):  # noqa: F811
    a = lab.hosts["a"]
    client, f = served_client(lab, a, 7201)
    try:
        lock.arm(a.netns)
        assert not lock.is_locked(a.netns)
        f.write(b"armed\n"); f.flush()
        assert f.readline() == b"svc armed\n"      # dormant: the service answers at once

        lock.lock(a.netns, armed=True)
        assert lock.is_locked(a.netns)
        f.write(b"woken\n"); f.flush()
        ready, _, _ = select.select([client], [], [], 0.5)
        assert not ready, "a woken lock let the answer through"
        assert lock.unlock(a.netns) is True
        assert f.readline() == b"svc woken\n"

        # an agent that restarted since the arm does not know it armed: the full lock
        # replaces the dormant table, and locks
        lock.arm(a.netns)
        lock.lock(a.netns)
        assert lock.is_locked(a.netns)
    finally:
        lock.unlock(a.netns)
        client.close()
    assert not lock.is_locked(a.netns)


def test_a_path_that_is_not_a_namespace_is_refused_by_the_kernel(tmp_path):
    fake = tmp_path / "not-a-netns"
    fake.write_text("")
    with pytest.raises(OSError, match="setns"):
        _nftnl.delete_table(str(fake), "inet", lock.TABLE)
