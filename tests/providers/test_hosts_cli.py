"""`cloudmig hosts` / `host create` / `host destroy` through the real console script."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from cloudsim.arm_server import ARM_SUBSCRIPTION

CLOUDMIG = str(Path(sys.executable).parent / "cloudmig")


def cloudmig(*args: str, env: dict, check: bool = True) -> subprocess.CompletedProcess:
    """The installed console script, with the cloud variables of ``env`` and nothing of ours."""
    full = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "AZURE_"))}
    res = subprocess.run([CLOUDMIG, *args], capture_output=True, text=True, env={**full, **env}, timeout=120)
    if check and res.returncode != 0:
        raise AssertionError(f"cloudmig {' '.join(args)}: {res.returncode}\n{res.stdout}\n{res.stderr}")
    return res


def test_create_list_destroy_aws(aws_env, state_dir):
    env = dict(aws_env.env, CLOUDMIG_STATE_DIR=str(state_dir))
    res = cloudmig("host", "create", "--provider", "aws", "--operator-cidr", "203.0.113.7/32",
                   "--tunnel-peer", "198.51.100.2", "--option", "elastic_ip=true", "--no-wait", "cli1", env=env)
    assert "host cli1 (aws) running at" in res.stdout
    assert "security group" in res.stdout                # progress lines
    hosts = json.loads(cloudmig("hosts", "--json", env=env).stdout)
    (h,) = [h for h in hosts if h["name"] == "cli1"]
    assert h["provider"] == "aws" and h["state"] == "running" and h["public_address"]
    assert "cli1" in cloudmig("hosts", env=env).stdout
    cloudmig("host", "destroy", "cli1", env=env)
    again = cloudmig("host", "destroy", "cli1", env=env)     # safe to re-run
    assert "nothing to do" in again.stdout
    swept = cloudmig("host", "destroy", "--provider", "aws", "cli1", env=env)
    assert "nothing left" in swept.stdout
    assert json.loads(cloudmig("hosts", "--json", env=env).stdout) == []


def test_dry_run_changes_nothing(aws_env, state_dir):
    env = dict(aws_env.env, CLOUDMIG_STATE_DIR=str(state_dir))
    for provider in ("aws", "azure"):
        res = cloudmig("host", "create", "--provider", provider, "--operator-cidr", "203.0.113.7/32",
                       "--dry-run", "plan1", env=dict(env, AZURE_SUBSCRIPTION_ID=ARM_SUBSCRIPTION))
        assert "would create host plan1" in res.stdout and "cloudmig:host=plan1" in res.stdout
    assert not (state_dir / "inventory.json").exists()
    ec2 = aws_env.ec2()
    assert not [g for g in ec2.describe_security_groups()["SecurityGroups"] if g["GroupName"] == "cloudmig-plan1"]


def test_errors_print_a_sentence_and_the_exit_code(aws_env, state_dir):
    env = dict(aws_env.env, CLOUDMIG_STATE_DIR=str(state_dir), AWS_SECRET_ACCESS_KEY="wrong")
    res = cloudmig("host", "create", "--provider", "aws", "--operator-cidr", "203.0.113.7/32", "cli2",
                   env=env, check=False)
    assert res.returncode == 4                           # ProviderError
    assert res.stderr.startswith("Error: aws refused") and "AuthFailure" in res.stderr
    assert "Traceback" not in res.stderr
    res = cloudmig("host", "create", "--provider", "aws", "cli2", env=env, check=False)
    assert res.returncode == 2 and "--operator-cidr" in res.stderr
    res = cloudmig("host", "create", "--provider", "aws", "--option", "nonsense", "cli2", env=env, check=False)
    assert res.returncode == 2 and "KEY=VALUE" in res.stderr


def test_core_cli_does_not_import_cloud_sdks():
    code = ("import sys, cloudmig.cli; cloudmig.cli.app; import cloudmig.providers.aws, cloudmig.providers.azure, "
            "cloudmig.providers.cloudinit, cloudmig.providers.cloud_errors;"
            "bad = [m for m in sys.modules if m.split('.')[0] in ('boto3', 'botocore', 'azure', 'msal')];"
            "print(bad); sys.exit(1 if bad else 0)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
