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


def test_every_package_is_listed_in_pyproject():
    """A package missing from [tool.setuptools] packages works in an editable install and
    is silently absent from a real one."""
    import tomllib
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    listed = set(tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = set()
    for folder, prefix in (("cloudmig", "cloudmig"), ("providers", "cloudmig.providers"),
                           ("network", "cloudmig.network")):
        for init in (root / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(root / folder).parts
            found.add(".".join((prefix, *rel)))
    assert found == listed
