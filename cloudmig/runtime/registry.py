"""Registry images, pulled on the controller with skopeo into an OCI image layout.

    registry.is_reference("127.0.0.1:5000/web:1")         # True: a registry, a tag
    registry.is_reference("web.tar")                      # False: a file name (that is missing)
    layout = registry.pull("docker://127.0.0.1:5000/web:1", work / "pull")   # an OCI layout dir

A reference is ``[REGISTRY/]NAME[:TAG][@sha256:...]`` as Docker writes it, or the same behind
``docker://``. Without ``docker://`` a string counts as a reference only if it is no existing
path and has a tag, a digest or a registry (a first part with a dot or a port, or
``localhost``), so a mistyped file name is reported as missing, not looked up on Docker Hub.
Plain HTTP (no TLS) is allowed only for loopback registries and for those listed in
``$CLOUDMIG_INSECURE_REGISTRIES`` (comma-separated HOST[:PORT]), as Docker does.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
import os
import re
import shutil
import subprocess
from pathlib import Path

from cloudmig import errors

log = logging.getLogger(__name__)

PULL_TIMEOUT_S = 1800              # a whole image of a few GiB over a slow link
INSECURE_ENV = "CLOUDMIG_INSECURE_REGISTRIES"
DEFAULT_REGISTRY = "docker.io"
TRANSPORT = "docker://"

_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_NAME_RE = re.compile(rf"^{_COMPONENT}(?:/{_COMPONENT})*$")
_TAG_RE = re.compile(r"^[\w][\w.-]{0,127}$")
_DIGEST_RE = re.compile(r"^sha256:[0-9a-f]{64}$")
_DOMAIN_RE = re.compile(r"^(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*"
                        r"|\[[0-9a-fA-F:]+\])(?::[0-9]{1,5})?$")


@dataclasses.dataclass(frozen=True)
class Reference:
    registry: str               # host[:port]; docker.io when the reference names none
    name: str                   # repository, e.g. library/redis
    tag: str | None = None
    digest: str | None = None
    explicit_registry: bool = False

    def __str__(self) -> str:
        return (f"{self.registry}/{self.name}" + (f":{self.tag}" if self.tag else "")
                + (f"@{self.digest}" if self.digest else ""))

    @property
    def host(self) -> str:
        if self.registry.startswith("["):
            return self.registry[1:self.registry.index("]")]
        return self.registry.rsplit(":", 1)[0] if ":" in self.registry else self.registry


def parse(image: str) -> Reference | None:
    """``image`` as a registry reference, or None if it is not one."""
    ref = image[len(TRANSPORT):] if image.startswith(TRANSPORT) else image
    rest, _, digest = ref.partition("@")
    if digest and not _DIGEST_RE.match(digest):
        return None
    first, slash, remainder = rest.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost" or first.startswith("[")):
        if not _DOMAIN_RE.match(first):
            return None
        registry, path, explicit = first, remainder, True
    else:
        registry, path, explicit = DEFAULT_REGISTRY, rest, False
    name, _, tag = path.rpartition(":") if ":" in path else (path, "", "")
    if (tag and not _TAG_RE.match(tag)) or not _NAME_RE.match(name):
        return None
    if not explicit and "/" not in name:
        name = "library/" + name
    return Reference(registry=registry, name=name, tag=tag or None, digest=digest or None,
                     explicit_registry=explicit)


def is_reference(image: str) -> bool:
    """Whether ``--image image`` means a registry image (see the module's docstring)."""
    if image.startswith(TRANSPORT):
        return True
    if image.startswith(("/", ".", "~")) or os.path.exists(image):
        return False
    ref = parse(image)
    return ref is not None and bool(ref.tag or ref.digest or ref.explicit_registry)


def _insecure(ref: Reference) -> bool:
    """Plain HTTP allowed: a loopback registry, or one the user listed."""
    listed = {r.strip() for r in os.environ.get(INSECURE_ENV, "").split(",") if r.strip()}
    if ref.registry in listed or ref.host in listed:
        return True
    if ref.host == "localhost":
        return True
    try:
        return ipaddress.ip_address(ref.host).is_loopback
    except ValueError:
        return False


def pull(image: str, dest: Path) -> Path:
    """Copy registry image ``image`` into a new OCI layout at ``dest`` (tag ``latest``)."""
    ref = parse(image)
    if ref is None:
        raise errors.ConfigError(f"{image!r} is not a registry reference.",
                                 hint="Write it as REGISTRY/NAME:TAG, e.g. 127.0.0.1:5000/web:1.")
    skopeo = shutil.which("skopeo")
    if not skopeo:
        raise errors.HostSetupError("Pulling a registry image needs skopeo on this machine, which lacks it.",
                                    hint="Install it: apt-get install skopeo (cloudmig/bootstrap-host does).")
    if ":" in str(dest):
        raise errors.ConfigError(f"skopeo cannot write an OCI layout to {dest}: the path has a ':'.")
    argv = [skopeo, "--command-timeout", f"{PULL_TIMEOUT_S}s", "copy", "--quiet"]
    if _insecure(ref):
        argv.append("--src-tls-verify=false")
    argv += [f"{TRANSPORT}{ref}", f"oci:{dest}:latest"]
    log.info("pulling %s with skopeo", ref)
    try:
        res = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                             timeout=PULL_TIMEOUT_S + 30)
    except subprocess.TimeoutExpired:
        raise errors.ContainerError(f"Registry {ref.registry} did not deliver {ref} within {PULL_TIMEOUT_S} s.",
                                    hint="Check the registry and the network, or give an image file instead.") from None
    if res.returncode != 0:
        raise _pull_error(ref, res.stderr)
    return dest


def _skopeo_message(stderr: str) -> str:
    """The last fatal message in skopeo's log output (``level=fatal msg="..."``)."""
    for line in reversed(stderr.strip().splitlines()):
        m = re.search(r'msg="((?:[^"\\]|\\.)*)"', line)
        if m:
            return m.group(1).replace('\\"', '"')
    return stderr.strip().splitlines()[-1] if stderr.strip() else "no message"


def _pull_error(ref: Reference, stderr: str) -> errors.CloudmigError:
    """One sentence naming the problem and the fix, from what skopeo said."""
    why = _skopeo_message(stderr)
    low = why.lower()
    if any(s in low for s in ("connection refused", "no such host", "i/o timeout", "network is unreachable",
                              "no route to host", "connection reset", "timeout awaiting", "eof")):
        detail = next((s for s in ("connection refused", "no such host", "i/o timeout", "network is unreachable",
                                   "no route to host") if s in low), "no answer")
        return errors.ContainerError(f"Registry {ref.registry} does not answer ({detail}), so {ref} cannot be pulled.",
                                     hint="Check the registry's address and that it is running, or give an image file.")
    if any(s in low for s in ("manifest unknown", "name unknown", "not found", "404")):
        return errors.ConfigError(f"Image {ref} does not exist in registry {ref.registry}.",
                                  hint=f"Check the name and tag (`skopeo list-tags docker://{ref.registry}/{ref.name}` lists the tags).")
    if any(s in low for s in ("unauthorized", "authentication required", "denied")):
        return errors.ConfigError(f"Registry {ref.registry} refused {ref} (authentication required, or no such image).",
                                  hint=f"Log in with `skopeo login {ref.registry}`, or check the name.")
    if "http response to https client" in low:
        return errors.ConfigError(f"Registry {ref.registry} speaks plain HTTP, which cloudmig allows only for "
                                  "loopback registries.",
                                  hint=f"If it is trusted, list it in ${INSECURE_ENV}={ref.registry}.")
    if "x509" in low or "certificate" in low:
        return errors.ConfigError(f"Registry {ref.registry}'s TLS certificate is not trusted here ({why}).",
                                  hint="Install its CA certificate on this machine.")
    return errors.ContainerError(f"Pulling {ref} with skopeo failed: {why}.")
