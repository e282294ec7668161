"""The first-boot user-data both clouds use: one source, under EC2's 16 KiB, secrets 0600."""

from __future__ import annotations

import gzip
import os
import subprocess
from pathlib import Path

import pytest
import yaml

from cloudmig import errors
from cloudmig.providers import cloudinit

TOKEN = "k3J9-token-for-tests_0123456789"
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEXAMPLEEXAMPLEEXAMPLEEXAMPLEEXAMPLEEXAMP cloudmig-test"
REPO = Path(__file__).resolve().parents[2]


def _files(text):
    doc = yaml.safe_load(text)
    return doc, {f["path"]: f for f in doc["write_files"]}


def test_embeds_the_project_bootstrap_and_fits_ec2():
    data = cloudinit.user_data(TOKEN, KEY)
    assert len(data) <= cloudinit.USER_DATA_LIMIT_BYTES
    assert data[:2] == b"\x1f\x8b"          # gzip: cloud-init unpacks it first
    text = gzip.decompress(data).decode()
    assert text.startswith("#cloud-config\n")
    doc, files = _files(text)
    # text, packed once by the user-data's gzip (gz+b64 inside packed ~420 bytes worse)
    assert "encoding" not in files[cloudinit.BOOTSTRAP_PATH]
    script = files[cloudinit.BOOTSTRAP_PATH]["content"].encode()
    # the project's bootstrap without its comment lines: every other line, in order, and
    # its here-document (the CRIU patch, whose lines may start with '#') byte for byte
    source = (REPO / "cloudmig" / "bootstrap-host").read_text()
    code = [line for line in source.splitlines()[1:] if line.strip() and not line.lstrip().startswith("#")]
    patch = source[source.index("<<'PATCH'\n"):source.index("\nPATCH\n")]
    shipped = script.decode()
    assert shipped.startswith("#!") and patch in shipped
    assert [line for line in shipped.splitlines()[1:] if line.strip()
            and not line.lstrip().startswith("#")] == code
    assert subprocess.run(["bash", "-n"], input=script).returncode == 0
    assert files[cloudinit.AGENT_TOKEN_PATH]["permissions"] == "0600"
    assert files[cloudinit.AGENT_TOKEN_PATH]["content"] == TOKEN
    assert files["/root/.ssh/authorized_keys"]["permissions"] == "0600"
    assert doc["runcmd"] == [[cloudinit.FIRSTBOOT_PATH]]


def test_comment_lines_go_here_documents_stay():
    script = (b"#!/bin/sh\n# a comment\n\ncat <<'EOF'\n# kept: inside a here-document\nEOF\n"
              b"tr a b <<< here-string\n  # gone: a here-string opens no here-document\necho done\n")
    assert cloudinit.without_comments(script) == (
        b"#!/bin/sh\ncat <<'EOF'\n# kept: inside a here-document\nEOF\ntr a b <<< here-string\necho done\n")


def test_same_steps_for_machines_without_cloud_init():
    boot = cloudinit.build(TOKEN, KEY)
    by_path = {f.path: f for f in boot.files}
    assert by_path[cloudinit.AGENT_TOKEN_PATH].content == TOKEN.encode()
    assert by_path[cloudinit.AGENT_TOKEN_PATH].mode == 0o600
    assert b"bootstrap.status" in by_path[cloudinit.FIRSTBOOT_PATH].content
    assert boot.to_cloud_config() == cloudinit.unpack(cloudinit.user_data(TOKEN, KEY))    # deterministic


def test_oversized_user_data_is_refused(tmp_path):
    big = tmp_path / "bootstrap"
    big.write_bytes(os.urandom(50_000))                  # incompressible 50 KB
    with pytest.raises(errors.ConfigError, match="16384"):
        cloudinit.user_data(TOKEN, KEY, script=big)


@pytest.mark.parametrize("token, key", [("short", KEY), (TOKEN, "not a key"), (TOKEN + "\nx", KEY)])
def test_bad_inputs_are_refused(token, key):
    with pytest.raises(errors.ConfigError):
        cloudinit.build(token, key)
