"""The cloud bootstrap path for real: the generated #cloud-config, executed in a fresh lab host.

No cloud-init here, so a small runner does what cloud-init would with the same document:
write each ``write_files`` entry (decoded, with its mode), then run each ``runcmd`` command,
inside the lab host's network namespace. The document's own commands must end with an agent
running; the controller then reaches it and its ``doctor`` passes. Paths are relocated under
the test's directory (the lab host shares this machine's file system); the venv is this one,
so the bootstrap finds everything installed.
"""

from __future__ import annotations

import os
import secrets
import stat
import subprocess
from pathlib import Path

import pytest
import yaml

from cloudmig.agent.client import AgentClient, UnixTransport
from cloudsim import machines
from cloudmig.providers import cloudinit
from cloudmig.providers.ssh.remote import AgentLayout
from lab import VENV_BIN, Lab, new_lab_id
from cloudmig.bench.sshd import keygen

FIRSTBOOT_TIMEOUT_S = 300


def run_cloud_config(text: str, netns: str) -> None:
    """Do what cloud-init does with our document: write_files, then runcmd, in ``netns``."""
    assert text.startswith("#cloud-config\n")
    doc = yaml.safe_load(text)
    assert doc["disable_root"] is False and doc["ssh_pwauth"] is False
    for f in doc["write_files"]:
        assert f.get("encoding", "text") in ("text", "gz+b64") and f["owner"] == "root:root"
        path = Path(f["path"])
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(machines.file_bytes(f))
        os.chmod(path, int(f["permissions"], 8))
    for cmd in doc["runcmd"]:
        subprocess.run(["nsenter", f"--net=/run/netns/{netns}", *cmd], check=True,
                       timeout=FIRSTBOOT_TIMEOUT_S, stdin=subprocess.DEVNULL)


@pytest.fixture
def lab_host(tmp_path):
    lab = Lab(tmp_path / "state", new_lab_id())
    root = tmp_path / "vm"
    try:
        lab.cm("lab", "up", "--hosts", "1")
        yield lab, f"{lab.lab_id}-h1", root
    finally:
        layout_root = str(root / "var/lib/cloudmig-agent")
        subprocess.run(["sh", "-c", AgentLayout(host="c1", root=layout_root).stop_script(purge=True)],
                       capture_output=True)
        lab.cm("lab", "down", check=False)
    assert not lab.processes(str(root)), "the first-boot agent survived"
    assert not lab.leftovers(), lab.leftovers()


def test_generated_user_data_boots_an_agent_that_passes_doctor(lab_host, tmp_path):
    lab, netns, root = lab_host
    token = secrets.token_urlsafe(32)
    key = Path(f"{keygen(tmp_path / 'controller', 'cloudmig-c1')}.pub").read_text()
    boot = cloudinit.BootPaths(**{f: str(root) + getattr(cloudinit.BootPaths, f)
                                  for f in cloudinit.BootPaths.__dataclass_fields__})
    layout = AgentLayout(host="c1", root=str(root / "var/lib/cloudmig-agent"), venv=str(VENV_BIN.parent),
                         cgroup_parent=f"/cloudmig/{lab.lab_id}-c1", netns_prefix=f"{lab.lab_id}-c-c1")
    text = cloudinit.unpack(cloudinit.check_size(cloudinit.pack(
        cloudinit.build(token, key, host="c1", boot=boot, layout=layout).to_cloud_config())))
    assert "--keep-ssh" in {f["path"]: f for f in yaml.safe_load(text)["write_files"]}[boot.firstboot]["content"]

    run_cloud_config(text, netns)

    log = Path(boot.log).read_text()
    assert Path(boot.status).read_text().strip() == "ok", log
    assert "bootstrap: done     host ready" in log and "started nohup" in log, log
    for secret in (layout.token_file, boot.authorized_keys):
        assert stat.S_IMODE(os.stat(secret).st_mode) == 0o600
    assert Path(boot.authorized_keys).read_text().strip() == key.strip()

    # the agent runs in the lab host's namespace, as cloud-init on a VM would leave it
    pid = int(Path(layout.pid_file).read_text())
    assert os.stat(f"/proc/{pid}/ns/net").st_ino == os.stat(f"/run/netns/{netns}").st_ino
    with AgentClient(UnixTransport(layout.socket), token, host="c1") as agent:
        pong = agent.call("ping")
        checks = agent.call("doctor")
    assert pong["host"] == "c1" and pong["pid"] == pid
    failed = [c for c in checks if c["status"] == "fail" and c.get("required", True)]
    assert checks and not failed, failed
    with pytest.raises(Exception, match="token"):
        with AgentClient(UnixTransport(layout.socket), "wrong-" + token, host="c1") as agent:
            agent.call("ping")
