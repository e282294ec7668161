"""providers/ and network/ install as cloudmig.providers / cloudmig.network, nothing generic."""

from __future__ import annotations

import importlib
import importlib.util

import cloudmig


def test_subpackages_import_under_cloudmig():
    for name in ("cloudmig.providers", "cloudmig.network", "cloudmig.providers.lab"):
        importlib.import_module(name)


def test_no_generic_top_level_packages():
    assert importlib.util.find_spec("providers") is None
    assert importlib.util.find_spec("network") is None


def test_public_surface_is_explicit():
    for name in cloudmig.__all__:
        assert hasattr(cloudmig, name)
