"""Simulated VMs: a lab network namespace per instance, booted from the instance's own user-data.

    topo = Topology("t1ab"); topo.ensure_bridge()
    vm = Machine(topo, workdir, address="198.18.7.129", user_data=text, name="i-0abc")
    vm.boot()              # the "image" boots: cloud-init's work, sshd on :22, then runcmd
    vm.first_boot_done()   # True once runcmd has ended
    vm.stop()              # every process of the VM, its cgroups, mounts and namespace

What a VM is here:

- its network: a namespace on the lab's bridge holding the instance's public address (one
  from 198.18.0.0/15, which the simulated control planes allocate);
- its file system: this machine's, seen through a private mount namespace where the places
  first boot writes (/root, /usr/local/sbin, /var/log, /var/lib, /opt) are overlays of the VM's
  own, so the user-data's absolute paths land in the VM, never on the machine; the image
  carries cloudmig at /opt/cloudmig/venv (the running venv, bound read-only), as an image
  built for cloudmig would, so first boot starts the agent and its bootstrap finds every
  step done;
- its cgroups and /run: the default /cloudmig cgroup of each hierarchy is the VM's own
  directory, and /run a tmpfs of its own (netns names, sshd's privilege separation, CRIU's
  cache, wireguard-go's sockets): two VMs may both run a container "db";
- cloud-init's part, done from the ``#cloud-config`` document as cloud-init does it:
  ``ssh_keys`` become sshd's host keys, ``write_files`` are written with their modes,
  sshd (the image's) listens on port 22, then each ``runcmd`` command runs, output in
  ``cloud-init-output.log`` of the VM's directory.
"""

from __future__ import annotations

import base64
import gzip
import os
import shlex
import signal
import subprocess
import threading
import time
from pathlib import Path

import yaml

from cloudmig.providers.lab import cleanup
from cloudmig.providers.lab.topology import HOST_ADDRESS_OFFSET, Topology

SSHD = "/usr/sbin/sshd"
PRIVATE_DIRS = ("/root", "/usr/local", "/var/log", "/var/lib", "/opt")
# A "bare" image is plain Debian 12 without a package mirror configured (an air-gapped image):
# no CRIU of ours, no cloudmig, no apt sources. Its first boot has to fetch CRIU and cannot: the
# bootstrap fails at once, at its step sid-apt, without trying the network.
BARE_IMAGE_HIDES = ("/usr/local/sbin/criu",)
APT_SOURCES = ("/etc/apt/sources.list", "/etc/apt/sources.list.d/debian.sources")
IMAGE_VENV = "/opt/cloudmig/venv"
AGENT_CGROUP = "cloudmig"           # the agent's default cgroup parent (/cloudmig)
START_TIMEOUT_S = 10
RUNCMD_TIMEOUT_S = 600


def cgroup_mounts() -> list[str]:
    """Mount points of cgroup hierarchies (v1 controllers and v2)."""
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        if right.split()[0] in ("cgroup", "cgroup2"):
            found.append(left.split()[4])
    return found


class Machine:
    def __init__(self, topo: Topology, workdir: Path, address: str, user_data: str, name: str,
                 venv: Path, bare: bool = False, hangs: bool = False) -> None:
        octet = int(address.rsplit(".", 1)[1])
        if address != topo.public_address(octet - HOST_ADDRESS_OFFSET):
            raise ValueError(f"{address} is not on the lab's subnet {topo.bridge_address}/24")
        self.topo, self.address, self.name, self.venv = topo, address, name, venv
        self.host = f"v{octet}"                        # the topology's host name for it
        self.index = octet - HOST_ADDRESS_OFFSET
        self.netns = topo.host_netns(self.host)
        self.dir = workdir / f"vm-{self.host}"
        self.user_data = user_data
        self.bare = bare
        self.hangs = hangs          # the image never boots as far as sshd and cloud-init
        self.cgroup = f"cloudsim-{topo.lab}-{self.host}"
        self.holder: subprocess.Popen | None = None
        self.sshd: subprocess.Popen | None = None
        self._runcmd: threading.Thread | None = None
        self._done = threading.Event()

    # ------------------------------------------------------------------ boot
    def boot(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.dir, 0o700)
        self.topo.add_host(self.host, self.index, None)
        try:
            self._start_holder()
            if self.hangs:
                return
            doc = yaml.safe_load(self.user_data) if self.user_data.startswith("#cloud-config") else {}
            self._host_keys(doc.get("ssh_keys") or {})
            for f in doc.get("write_files") or []:
                self._write(f)
            self._start_sshd()
            self._runcmd = threading.Thread(target=self._run_commands, args=(doc.get("runcmd") or [],),
                                            daemon=True)
            self._runcmd.start()
        except BaseException:
            self.stop()
            raise

    def _start_holder(self) -> None:
        """The VM's 'init': holds its mount namespace, set up before anything of the VM runs."""
        q = shlex.quote
        lines = ["set -e", "mount --make-rprivate /"]
        for d in PRIVATE_DIRS:
            up, work = self.dir / "upper" / d.strip("/").replace("/", "_"), self.dir / "work" / d.strip("/").replace("/", "_")
            up.mkdir(parents=True, exist_ok=True)
            work.mkdir(parents=True, exist_ok=True)
            lines.append(f"mount -t overlay overlay -o lowerdir={q(d)},upperdir={q(str(up))},workdir={q(str(work))} {q(d)}")
        # the agent's files live on a plain directory: it mounts overlays of its own below it
        agent_dir = self.dir / "agent"
        agent_dir.mkdir(exist_ok=True)
        lines.append(f"mkdir -p /var/lib/cloudmig-agent && mount --bind {q(str(agent_dir))} /var/lib/cloudmig-agent")
        if self.bare:
            lines += [f"rm -f {q(p)}" for p in BARE_IMAGE_HIDES]      # whiteouts in the VM's overlay
            lines += [f"mount --bind /dev/null {q(p)}" for p in APT_SOURCES if os.path.exists(p)]
        else:
            lines += [f"mkdir -p {IMAGE_VENV} && mount --bind {q(str(self.venv))} {IMAGE_VENV}",
                      f"mount -o remount,bind,ro {IMAGE_VENV}"]
        # /run is the VM's own tmpfs, as on a VM: its sshd's privilege-separation dir, CRIU's
        # cache, wireguard-go's sockets and its netns names are its own (another program on this
        # machine removing /run/sshd, as test sshds do when they stop, cannot break its sshd)
        netns_dir = self.dir / "netns"
        netns_dir.mkdir(exist_ok=True)
        lines += ["mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs /run",
                  "mkdir -p /run/netns /run/sshd /run/lock && chmod 0755 /run/sshd",
                  f"mount --bind {q(str(netns_dir))} /run/netns"]
        for mnt in cgroup_mounts():
            own, default = Path(mnt) / self.cgroup, Path(mnt) / AGENT_CGROUP
            own.mkdir(exist_ok=True)
            default.mkdir(exist_ok=True)
            lines.append(f"mount --bind {q(str(own))} {q(str(default))}")
        lines += ["echo ready", "exec sleep infinity"]
        self.holder = subprocess.Popen(
            ["nsenter", f"--net=/run/netns/{self.netns}", "unshare", "--mount", "--propagation", "private",
             "sh", "-c", "\n".join(lines)],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
        first = self.holder.stdout.readline().decode().strip()       # type: ignore[union-attr]
        if first != "ready":
            raise RuntimeError(f"VM {self.name}: its mount namespace failed: "
                               f"{self.holder.stderr.read().decode()}")      # type: ignore[union-attr]

    def _in_vm(self, path: str) -> Path:
        """``path`` as the VM sees it (through its init's root)."""
        return Path(f"/proc/{self.holder.pid}/root") / path.lstrip("/")     # type: ignore[union-attr]

    def _nsenter(self) -> list[str]:
        return ["nsenter", "-t", str(self.holder.pid), "-m", "-n", "--"]     # type: ignore[union-attr]

    def _host_keys(self, keys: dict) -> None:
        (self.dir / "sshd").mkdir(exist_ok=True)
        private = keys.get("ed25519_private")
        if not private:             # no key given: the image makes one (cloud-init's default)
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f",
                            str(self.dir / "sshd" / "ssh_host_ed25519_key")], check=True)
            return
        path = self.dir / "sshd" / "ssh_host_ed25519_key"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(private if private.endswith("\n") else private + "\n")
        Path(f"{path}.pub").write_text(keys["ed25519_public"].strip() + "\n")

    def _write(self, entry: dict) -> None:
        data = file_bytes(entry)
        path = self._in_vm(entry["path"])
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(path, int(str(entry.get("permissions", "0644")), 8))

    def _start_sshd(self) -> None:
        cfg = self.dir / "sshd" / "sshd_config"
        cfg.write_text("PermitRootLogin prohibit-password\nPasswordAuthentication no\n"
                       "KbdInteractiveAuthentication no\nPubkeyAuthentication yes\nUsePAM no\n"
                       f"PidFile {self.dir}/sshd/sshd.pid\nPrintMotd no\nAcceptEnv none\n"
                       "StrictModes no\n")
        log = open(self.dir / "sshd" / "sshd.log", "ab")
        self.sshd = subprocess.Popen(
            [*self._nsenter(), SSHD, "-D", "-e", "-p", "22", "-o", f"ListenAddress={self.address}",
             "-f", str(cfg), "-h", str(self.dir / "sshd" / "ssh_host_ed25519_key")],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
        log.close()

    def _run_commands(self, commands: list) -> None:
        with open(self.dir / "cloud-init-output.log", "ab") as out:
            for cmd in commands:
                argv = cmd if isinstance(cmd, list) else ["sh", "-c", cmd]
                try:
                    subprocess.run([*self._nsenter(), *argv], stdin=subprocess.DEVNULL, stdout=out,
                                   stderr=out, timeout=RUNCMD_TIMEOUT_S, start_new_session=True)
                except (OSError, subprocess.TimeoutExpired) as exc:
                    out.write(f"runcmd {argv}: {exc}\n".encode())
        self._done.set()

    def first_boot_done(self) -> bool:
        return self._done.is_set()

    def wait_first_boot(self, timeout_s: float = RUNCMD_TIMEOUT_S) -> bool:
        return self._done.wait(timeout_s)

    # ------------------------------------------------------------------ stop
    def processes(self) -> list[int]:
        """Every process of the VM: in its network or mount namespace, or in its cgroups."""
        pids = set(cleanup.pids_in_netns(self.netns)) if (Path("/run/netns") / self.netns).exists() else set()
        if self.holder and self.holder.poll() is None:
            try:
                mnt = os.readlink(f"/proc/{self.holder.pid}/ns/mnt")
            except OSError:
                mnt = None
            for pid in filter(str.isdigit, os.listdir("/proc")):
                try:
                    if mnt and os.readlink(f"/proc/{pid}/ns/mnt") == mnt:
                        pids.add(int(pid))
                except OSError:
                    continue
        for mnt in cgroup_mounts():
            for procs in (Path(mnt) / self.cgroup).rglob("cgroup.procs"):
                try:
                    pids.update(int(p) for p in procs.read_text().split())
                except OSError:
                    continue
        return sorted(pids)

    def stop(self) -> None:
        for _ in range(3):
            pids = self.processes()
            if not pids:
                break
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.2)
        for proc in (self.holder, self.sshd):
            if proc:
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    pass
        for mnt in cgroup_mounts():
            own = Path(mnt) / self.cgroup
            if own.exists():
                for d in sorted((p for p in own.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
                    try:
                        d.rmdir()
                    except OSError:
                        pass
                try:
                    own.rmdir()
                except OSError:
                    pass
        self.topo.remove_host(self.host)

    def leftovers(self) -> list[str]:
        left = [f"pid {p}" for p in self.processes()]
        left += [f"cgroup {Path(m) / self.cgroup}" for m in cgroup_mounts() if (Path(m) / self.cgroup).exists()]
        if (Path("/run/netns") / self.netns).exists():
            left.append(f"netns {self.netns}")
        return left


def file_bytes(entry: dict) -> bytes:
    """What cloud-init writes for one ``write_files`` entry: its content, decoded as its
    ``encoding`` says (none: text as it is)."""
    content = entry.get("content", "")
    data = content.encode() if isinstance(content, str) else content
    if entry.get("encoding") in ("gz+b64", "gzip+base64"):
        return gzip.decompress(base64.b64decode(data))
    if entry.get("encoding") in ("b64", "base64"):
        return base64.b64decode(data)
    return data
