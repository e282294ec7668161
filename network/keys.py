"""WireGuard key pairs: X25519, base64 like `wg genkey` / `wg pubkey`, private files 0600.

    from cloudmig.network import keys
    path = keys.default_path("cm1a2b3c4d5e")       # <state dir>/network/keys/cm1a2b3c4d5e.key
    public = keys.create(path)                       # writes the private key (0600), returns public
    assert keys.public_key(keys.load(path)) == public
    keys.remove(path)

Private keys never appear in logs, reprs or error messages. The UAPI of wireguard-go wants
keys in hex: ``to_hex``.
"""

from __future__ import annotations

import base64
import binascii
import logging
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import x25519

from cloudmig import errors, paths

log = logging.getLogger(__name__)

KEY_LEN = 32  # bytes of an X25519 key
_RAW = serialization.Encoding.Raw


def default_path(ifname: str) -> Path:
    """Where the private key of interface ``ifname`` lives (one key pair per tunnel end)."""
    return paths.state_dir() / "network" / "keys" / f"{ifname}.key"


def generate() -> str:
    """A new private key, base64."""
    raw = x25519.X25519PrivateKey.generate().private_bytes(
        _RAW, serialization.PrivateFormat.Raw, serialization.NoEncryption())
    return base64.b64encode(raw).decode()


def decode(key_b64: str, what: str = "key") -> bytes:
    """The 32 raw bytes of a base64 key, or NetworkError (the key itself is never shown)."""
    try:
        raw = base64.b64decode(key_b64.strip(), validate=True)
    except (binascii.Error, ValueError, AttributeError) as exc:
        raise errors.NetworkError(f"The WireGuard {what} is not valid base64.",
                                  hint="Use a key made by cloudmig or `wg genkey`.") from exc
    if len(raw) != KEY_LEN:
        raise errors.NetworkError(f"The WireGuard {what} has {len(raw)} bytes, not {KEY_LEN}.",
                                  hint="Use a key made by cloudmig or `wg genkey`.")
    return raw


def public_key(private_b64: str) -> str:
    """The public key (base64) of a private key (base64), as `wg pubkey` prints it."""
    private = x25519.X25519PrivateKey.from_private_bytes(decode(private_b64, "private key"))
    return base64.b64encode(private.public_key().public_bytes(_RAW, serialization.PublicFormat.Raw)).decode()


def to_hex(key_b64: str, what: str = "key") -> str:
    return decode(key_b64, what).hex()


def from_hex(key_hex: str) -> str:
    return base64.b64encode(bytes.fromhex(key_hex)).decode()


def create(path: Path) -> str:
    """Write a new private key to ``path`` (0600) and return its public key."""
    private = generate()
    paths.write_secret(path, private + "\n")
    log.info("wrote a WireGuard private key to %s", path)
    return public_key(private)


def load(path: Path) -> str:
    """The private key (base64) stored in ``path``."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise errors.NetworkError(f"Cannot read the WireGuard private key file {path}: {exc.strerror}.",
                                  hint="Create it with keys.create(path) first.") from exc
    decode(text, f"private key in {path}")
    return text.strip()


def remove(path: Path) -> bool:
    """Delete a key file; False if it was not there."""
    try:
        Path(path).unlink()
    except FileNotFoundError:
        return False
    log.info("removed WireGuard key file %s", path)
    return True
