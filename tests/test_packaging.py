"""providers/ and network/ install as cloudmig.providers / cloudmig.network, nothing generic."""

from __future__ import annotations

import importlib
import subprocess
import sys

import cloudmig


def test_subpackages_import_under_cloudmig():
    for name in ("cloudmig.providers", "cloudmig.network", "cloudmig.providers.lab"):
        importlib.import_module(name)


def test_no_generic_top_level_packages():
    # asked of the installed environment, from a neutral directory: the test folders
    # themselves are on pytest's sys.path and do not count
    code = ("import importlib.util as u; "
            "print(u.find_spec('providers'), u.find_spec('network'), u.find_spec('cloudmig.network'))")
    out = subprocess.run([sys.executable, "-c", code], cwd="/", capture_output=True, text=True,
                         check=True).stdout.split()
    assert out[0] == "None" and out[1] == "None"
    assert out[2] != "None"


def test_public_surface_is_explicit():
    for name in cloudmig.__all__:
        assert hasattr(cloudmig, name)
