"""OCI runtime config (config.json) for a cloudmig container.

    spec.runtime_config(name="web", rootfs="/var/lib/cloudmig/hosts/h1/containers/web/rootfs",
                        command=["python3", "-m", "http.server"], env={"A": "1"},
                        netns_path="/run/netns/cm-c-h1-web", cgroups_path="/cloudmig/h1/web")

The container's stdio is redirected *inside* the container to ``/.cloudmig.log`` (its
writable layer) before the command starts: CRIU cannot dump files opened outside the
container's mount namespace, and this way the log travels with the container.
"""

from __future__ import annotations

STDIO_LOG = "/.cloudmig.log"
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_STDIO_WRAPPER = f'exec </dev/null >>{STDIO_LOG} 2>&1; exec "$@"'
_CAPS = ["CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD", "CAP_NET_RAW",
         "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE",
         "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE", "CAP_IPC_LOCK"]
# No "rlimits": the container inherits the agent's. Setting them above the current hard
# limit needs CAP_SYS_RESOURCE, which the project's machines do not have.


def wrapped_command(command: list[str]) -> list[str]:
    return ["/bin/sh", "-c", _STDIO_WRAPPER, "cloudmig-init", *command]


# CRIU options for runc's checkpoint/restore of this container (runc passes the file named by
# the annotation org.criu.config to CRIU). cloudmig locks the container's network namespace
# itself (cloudmig.network.lock); CRIU's own lock runs iptables in the host's namespace, where
# it matches nothing and costs two iptables runs per TCP connection inside the freeze.
#
# The masked directory /proc/acpi is a read-only empty tmpfs mount, and CRIU dumps and
# restores every tmpfs with a `tar --gzip` run: ~4 ms each way, inside the freeze, for a
# mount that holds nothing. Declared external here, CRIU skips it at the dump and, at the
# restore, binds the bundle's own empty directory there instead (read-only, still empty,
# after any number of moves: tests/test_migration.py). Both directions live in one file
# because a restored container is dumped again later with the same file. /sys/firmware is
# masked by a read-only bind of that directory from the start (runc_config), not by a tmpfs:
# runc hands its bind mounts to CRIU as external itself. (Mapped from a tmpfs the way
# /proc/acpi is, CRIU rebuilt it read-write after a second move, under the read-only /sys;
# runc refuses binds inside /proc, hence the two ways.)
MASKED_PATHS = ("/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
                "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/sys/firmware",
                "/proc/scsi")
MASKED_DIRS = ("/proc/acpi",)
BIND_MASKED_DIRS = ("/sys/firmware",)
CRIU_CONFIG_ANNOTATION = "org.criu.config"


def criu_config(masked_empty_dir: str, cgroup_yard: str | None = None) -> str:
    """``cgroup_yard``: the host's cgroup mounts, laid out as CRIU names its controllers
    (see cloudmig.runtime.mounts.cgroup_yard); CRIU then mounts no yard of its own. Its
    own cgroup2 mount, right after the previous CRIU unmounted one, waited 10-30 ms."""
    lines = ["network-lock skip"]
    if cgroup_yard:
        lines.append(f"cgroup-yard {cgroup_yard}")
    for path in MASKED_DIRS:
        key = "cm-masked" + path.replace("/", "-")
        lines.append(f"ext-mount-map {path}:{key}")           # dump: this mount is external
        lines.append(f"ext-mount-map {key}:{masked_empty_dir}")  # restore: bind this there
    return "\n".join(lines) + "\n"


def runtime_config(*, name: str, rootfs: str, command: list[str], env: dict[str, str],
                   netns_path: str, cgroups_path: str, cwd: str = "/",
                   memory_limit_bytes: int | None = None, criu_config: str | None = None,
                   masked_empty_dir: str | None = None) -> dict:
    full_env = {"PATH": DEFAULT_PATH, "HOME": "/root", "HOSTNAME": name}
    full_env.update(env)
    resources: dict = {"devices": [{"allow": False, "access": "rwm"}]}
    if memory_limit_bytes:
        resources["memory"] = {"limit": memory_limit_bytes}
    return {
        "ociVersion": "1.0.2",
        "process": {
            "terminal": False,
            "user": {"uid": 0, "gid": 0},
            "args": wrapped_command(command),
            "env": [f"{k}={v}" for k, v in full_env.items()],
            "cwd": cwd,
            "capabilities": {k: list(_CAPS) for k in ("bounding", "effective", "permitted")},
            "noNewPrivileges": True,
        },
        "root": {"path": rootfs, "readonly": False},
        "hostname": name,
        "annotations": {CRIU_CONFIG_ANNOTATION: criu_config} if criu_config else {},
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
             "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]},
            {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
             "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
            {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
             "options": ["nosuid", "noexec", "nodev"]},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs",
             "options": ["nosuid", "noexec", "nodev", "ro"]},
            *({"destination": path, "type": "bind", "source": masked_empty_dir,
               "options": ["rbind", "ro", "nosuid", "noexec", "nodev"]}
              for path in (BIND_MASKED_DIRS if masked_empty_dir else ())),
        ],
        "linux": {
            "cgroupsPath": cgroups_path,
            "resources": resources,
            "namespaces": [{"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"},
                           {"type": "network", "path": netns_path}],
            "maskedPaths": [p for p in MASKED_PATHS
                            if not (masked_empty_dir and p in BIND_MASKED_DIRS)],
            "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys",
                              "/proc/sysrq-trigger"],
        },
    }
