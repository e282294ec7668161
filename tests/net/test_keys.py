"""Keys: compatible with wireguard-tools, 0600 files, never in reprs or messages."""

from __future__ import annotations

import shutil
import stat
import subprocess

import pytest

from cloudmig import errors
from cloudmig.network import _uapi, keys
from cloudmig.network._wgtypes import PeerUpdate


def test_public_key_matches_wg_pubkey(tmp_path):
    private = keys.generate()
    if shutil.which("wg"):
        out = subprocess.run(["wg", "pubkey"], input=private, capture_output=True, text=True, check=True)
        assert out.stdout.strip() == keys.public_key(private)
    assert len(keys.decode(keys.public_key(private))) == 32


def test_create_writes_0600_and_remove_deletes(state_dir):
    path = keys.default_path("cmtest0")
    public = keys.create(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert keys.public_key(keys.load(path)) == public
    assert keys.remove(path) and not path.exists() and not keys.remove(path)


def test_bad_keys_never_echo_the_key():
    secret = "c2VjcmV0LW5vdC1hLWtleQ=="
    with pytest.raises(errors.NetworkError) as exc:
        keys.public_key(secret)
    assert secret not in str(exc.value) and "bytes" in str(exc.value)
    with pytest.raises(errors.NetworkError, match="not valid base64"):
        keys.decode("!!!")


def test_uapi_text_uses_hex_keys_and_round_trips():
    private, peer = keys.generate(), keys.public_key(keys.generate())
    text = _uapi.format_set(private, 51820, [PeerUpdate(peer, "198.18.250.12:51820",
                                                        ("100.64.0.2/32",), True, 25)])
    assert text.startswith("set=1\n") and text.endswith("\n\n")
    assert f"private_key={keys.to_hex(private)}" in text and private not in text
    assert "replace_allowed_ips=true\nallowed_ip=100.64.0.2/32" in text
    answer = [("private_key", keys.to_hex(private)), ("listen_port", "51820"),
              ("public_key", keys.to_hex(peer)), ("endpoint", "198.18.250.12:51820"),
              ("last_handshake_time_sec", "1700000000"), ("last_handshake_time_nsec", "500000000"),
              ("tx_bytes", "10"), ("rx_bytes", "20"), ("persistent_keepalive_interval", "25"),
              ("allowed_ip", "100.64.0.2/32"), ("allowed_ip", "100.96.0.5/32")]
    public, port, peers = _uapi.parse_get(answer)
    assert public == keys.public_key(private) and port == 51820
    assert peers[0].public_key == peer and peers[0].latest_handshake == 1700000000.5
    assert peers[0].allowed_ips == ("100.64.0.2/32", "100.96.0.5/32")
    assert (peers[0].tx_bytes, peers[0].rx_bytes, peers[0].persistent_keepalive) == (10, 20, 25)


def test_remove_peer_text():
    peer = keys.public_key(keys.generate())
    assert _uapi.format_set(None, None, [PeerUpdate(peer, remove=True)]).endswith("remove=true\n\n")
