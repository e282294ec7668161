"""Readiness checks of this machine: can it run and receive cloudmig containers?

    from cloudmig import doctor
    for check in doctor.run_checks():
        print(check.name, check.status, check.detail, check.hint)

Each check is pass / warn / fail; a failing *required* check makes ``cloudmig doctor``
exit non-zero. The agent runs the same checks on remote hosts.
"""

from __future__ import annotations

import ctypes
import dataclasses
import os
import platform
import re
import subprocess
from pathlib import Path

from cloudmig import paths

CRIU_MIN_VERSION = (4, 2)
# CRIU's lazy page server splices pages through pipes of up to this size; without
# CAP_SYS_RESOURCE it cannot grow them past fs.pipe-max-size ("page-pipe: tee: 65536").
PIPE_MAX_SIZE_NEEDED = 8 * 1024 * 1024
CHECK_TIMEOUT_S = 30
SYS_USERFAULTFD_X86_64 = 323
BOOTSTRAP_HINT = "Run `sudo cloudmig setup` (in a checkout: `make bootstrap`)."

PASS, WARN, FAIL = "pass", "warn", "fail"


@dataclasses.dataclass
class Check:
    name: str
    status: str
    detail: str
    hint: str = ""
    required: bool = True

    @property
    def failed(self) -> bool:
        return self.status == FAIL and self.required


def _run(argv: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=CHECK_TIMEOUT_S)


def parse_version(text: str) -> tuple[int, ...] | None:
    match = re.search(r"(\d+)\.(\d+)(?:\.(\d+))?", text)
    if not match:
        return None
    return tuple(int(g) for g in match.groups() if g is not None)


def check_kernel() -> Check:
    return Check("kernel", PASS, f"Linux {platform.release()} ({platform.machine()})")


def check_userfaultfd() -> Check:
    hint = "The kernel needs CONFIG_USERFAULTFD for post-copy (lazy pages)."
    if platform.machine() != "x86_64":
        ok = Path("/proc/sys/vm/unprivileged_userfaultfd").exists()
        return Check("userfaultfd", PASS if ok else FAIL, "sysctl present" if ok else "absent", hint)
    libc = ctypes.CDLL(None, use_errno=True)
    fd = libc.syscall(SYS_USERFAULTFD_X86_64, os.O_CLOEXEC | os.O_NONBLOCK)
    if fd < 0:
        err = ctypes.get_errno()
        return Check("userfaultfd", FAIL, f"userfaultfd() failed: {os.strerror(err)}", hint)
    os.close(fd)
    return Check("userfaultfd", PASS, "userfaultfd() works")


def check_checkpoint_restore() -> Check:
    ok = Path("/proc/sys/kernel/ns_last_pid").exists()
    return Check("checkpoint-restore", PASS if ok else FAIL,
                 "CONFIG_CHECKPOINT_RESTORE present" if ok else "ns_last_pid missing",
                 "" if ok else "The kernel needs CONFIG_CHECKPOINT_RESTORE.")


def check_namespaces() -> Check:
    kinds = ["net", "mnt", "pid", "ipc", "uts"]
    missing = [k for k in kinds if not Path(f"/proc/self/ns/{k}").exists()]
    if missing:
        return Check("namespaces", FAIL, "missing: " + ", ".join(missing),
                     "The kernel needs these namespaces for containers.")
    return Check("namespaces", PASS, ", ".join(kinds))


def check_tun() -> Check:
    try:
        fd = os.open("/dev/net/tun", os.O_RDWR)
    except OSError as exc:
        return Check("tun", FAIL, f"/dev/net/tun: {exc.strerror}",
                     "wireguard-go needs /dev/net/tun (CONFIG_TUN).")
    os.close(fd)
    return Check("tun", PASS, "/dev/net/tun opens")


# CRIU's checks, by the binary and the kernel they ran on: five runs of criu (~45 ms) that
# every migration's preflight asks each host's agent for. The answers change only with the
# binary or the kernel, so a long-lived agent keeps them; only checks that all passed are
# kept, so a host being fixed is looked at afresh every time.
_criu_passed: dict[tuple, list[Check]] = {}


def _binary_and_kernel(binary: str) -> tuple | None:
    try:
        st = os.stat(binary)
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None
    return binary, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, boot


def check_criu() -> list[Check]:
    binary = paths.criu_binary()
    if not binary:
        return [Check("criu", FAIL, "criu not found",
                      f"CRIU >= {'.'.join(map(str, CRIU_MIN_VERSION))} is needed. {BOOTSTRAP_HINT}")]
    key = _binary_and_kernel(binary)
    if key in _criu_passed:
        return [dataclasses.replace(c) for c in _criu_passed[key]]
    checks = _run_criu_checks(binary)
    if key is not None and all(c.status != FAIL for c in checks):
        _criu_passed[key] = [dataclasses.replace(c) for c in checks]
    return checks


def _run_criu_checks(binary: str) -> list[Check]:
    try:
        out = _run([binary, "--version"])
    except OSError as exc:
        return [Check("criu", FAIL, f"{binary}: {exc.strerror}", BOOTSTRAP_HINT)]
    version = parse_version(out.stdout)
    vtext = ".".join(map(str, version)) if version else "unknown"
    if not version or version[:2] < CRIU_MIN_VERSION:
        return [Check("criu", FAIL, f"{binary} is CRIU {vtext}",
                      "CRIU 4.2 or newer is needed on kernels >= 6.16 (older ones cannot dump "
                      f"TCP sockets there). {BOOTSTRAP_HINT}")]
    checks = [Check("criu", PASS, f"{binary} is CRIU {vtext}")]
    res = _run([binary, "check"])
    ok = res.returncode == 0
    checks.append(Check("criu-check", PASS if ok else FAIL,
                        "criu check: looks good" if ok else _last_line(res),
                        "" if ok else "Run `criu check` to see what the kernel lacks."))
    for feature, name, required, hint in (
        ("uffd-noncoop", "lazy-pages", True, "Post-copy needs userfaultfd with non-cooperative events."),
        ("tcp_half_closed", "tcp-repair", True, "Keeping TCP connections needs TCP repair mode."),
    ):
        res = _run([binary, "check", "--feature", feature])
        ok = res.returncode == 0
        checks.append(Check(name, PASS if ok else FAIL,
                            f"criu feature {feature}: " + ("supported" if ok else "missing"),
                            "" if ok else hint, required=required))
    res = _run([binary, "check", "--feature", "mem_dirty_track"])
    if res.returncode == 0:
        checks.append(Check("soft-dirty", PASS, "memory dirty tracking works: pre-copy possible",
                            required=False))
    else:
        checks.append(Check("soft-dirty", WARN,
                            "no soft-dirty tracking: pre-copy/hybrid unavailable, post-copy and "
                            "stop-and-copy work", "Needs CONFIG_MEM_SOFT_DIRTY; nothing to do "
                            "for post-copy.", required=False))
    return checks


def _last_line(res: subprocess.CompletedProcess) -> str:
    lines = (res.stderr or res.stdout or "").strip().splitlines()
    return lines[-1] if lines else f"exit {res.returncode}"


def check_pycriu() -> Check:
    try:
        import pycriu  # noqa: F401  (built from the same CRIU tree by the bootstrap)
    except ImportError:
        return Check("pycriu", WARN, "pycriu not importable in this Python",
                     "The bootstrap installs it into the project's venv.", required=False)
    return Check("pycriu", PASS, "importable", required=False)


def check_runc() -> Check:
    runc = paths.tool("runc")
    if not runc:
        return Check("runc", FAIL, "runc not found", f"apt-get install runc, or {BOOTSTRAP_HINT}")
    res = _run([runc, "--version"])
    first = (res.stdout.splitlines() or ["?"])[0]
    return Check("runc", PASS if res.returncode == 0 else FAIL, first)


def check_cgroups() -> Check:
    if Path("/sys/fs/cgroup/cgroup.controllers").exists():
        return Check("cgroups", PASS, "cgroup v2 (unified)")
    if Path("/sys/fs/cgroup/memory").exists() and Path("/sys/fs/cgroup/freezer").exists():
        return Check("cgroups", PASS, "cgroup v1 (memory, freezer, ...)")
    return Check("cgroups", FAIL, "no usable cgroup hierarchy", "Mount cgroup v2 or v1 controllers.")


def check_wireguard() -> Check:
    from cloudmig.network import wireguard      # the network layer decides the backend
    backend = wireguard.find_backend()
    if backend is None:
        return Check("wireguard", FAIL, "neither the kernel module nor wireguard-go",
                     f"apt-get install wireguard-go, or {BOOTSTRAP_HINT}")
    kind, detail = backend
    if kind == wireguard.WIREGUARD_GO:
        res = _run([detail, "--version"])
        version = (res.stdout.splitlines() or ["?"])[0]
        return Check("wireguard", PASS, f"userspace: {version} ({detail})")
    return Check("wireguard", PASS, detail)


def check_nftables() -> Check:
    nft = paths.tool("nft")
    if not nft:
        return Check("nftables", FAIL, "nft not found", f"apt-get install nftables, or {BOOTSTRAP_HINT}")
    res = _run([nft, "list", "tables"])
    if res.returncode != 0:
        return Check("nftables", FAIL, _last_line(res), "The kernel needs nf_tables.")
    return Check("nftables", PASS, "nft works")


def has_cap_sys_resource() -> bool:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("CapEff:"):
            return bool(int(line.split()[1], 16) & (1 << 24))
    return False


def check_pipe_max_size() -> Check:
    size = int(Path("/proc/sys/fs/pipe-max-size").read_text())
    if size >= PIPE_MAX_SIZE_NEEDED:
        return Check("pipe-max-size", PASS, f"fs.pipe-max-size = {size}")
    if has_cap_sys_resource():
        return Check("pipe-max-size", PASS, f"fs.pipe-max-size = {size}, but CAP_SYS_RESOURCE lets CRIU grow pipes")
    return Check("pipe-max-size", FAIL,
                 f"fs.pipe-max-size = {size} and no CAP_SYS_RESOURCE: the lazy page server fails",
                 f"sysctl -w fs.pipe-max-size={PIPE_MAX_SIZE_NEEDED} (the bootstrap does this).")


CONNTRACK_BUCKETS_FILE = Path("/proc/sys/net/netfilter/nf_conntrack_buckets")
CONNTRACK_BUCKETS_MAX = 16384   # as cloudmig/bootstrap-host sets it


def check_conntrack_buckets(path: Path = CONNTRACK_BUCKETS_FILE) -> Check:
    """CRIU walks the machine-wide conntrack hash twice inside every dump's freeze."""
    try:
        buckets = int(path.read_text())
    except (OSError, ValueError):
        return Check("conntrack-buckets", PASS, "no conntrack hash (nothing for CRIU to walk)")
    if buckets <= CONNTRACK_BUCKETS_MAX:
        return Check("conntrack-buckets", PASS, f"nf_conntrack_buckets = {buckets}")
    return Check("conntrack-buckets", WARN,
                 f"nf_conntrack_buckets = {buckets}: CRIU's two walks of it add ~{buckets * 2 // 30000} ms "
                 "to every freeze",
                 f"sysctl -w net.netfilter.nf_conntrack_buckets={CONNTRACK_BUCKETS_MAX} "
                 "(the bootstrap does this).")


def check_favordynmods() -> Check:
    """CRIU's restore moves tasks into cgroups inside the freeze; without favordynmods each
    move waits for an RCU grace period."""
    from cloudmig.runtime.mounts import cgroup2_mount
    found = cgroup2_mount()
    if found is None:
        return Check("cgroup-favordynmods", PASS, "no cgroup2 hierarchy (nothing to tune)")
    if found[1]:
        return Check("cgroup-favordynmods", PASS, f"cgroup2 on {found[0]} has favordynmods")
    return Check("cgroup-favordynmods", WARN,
                 f"cgroup2 on {found[0]} lacks favordynmods: restores wait ~20 ms longer",
                 f"mount -o remount,favordynmods {found[0]} (the bootstrap and the agent do this).")


def run_checks() -> list[Check]:
    checks = [check_kernel(), check_userfaultfd(), check_checkpoint_restore(), check_namespaces(),
              check_tun()]
    checks += check_criu()
    checks += [check_pycriu(), check_runc(), check_cgroups(), check_wireguard(), check_nftables(),
               check_pipe_max_size(), check_conntrack_buckets(), check_favordynmods()]
    return checks
