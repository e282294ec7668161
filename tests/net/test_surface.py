"""The network layer's public surface is explicit, and every module opens with an example."""

from __future__ import annotations

import importlib

import cloudmig.network as network


def test_public_names_exist_and_modules_document_themselves():
    for module_name in network.__all__:
        module = getattr(network, module_name)
        assert module.__doc__ and "from cloudmig.network import" in module.__doc__, module_name
        for name in getattr(module, "__all__", ()):
            assert hasattr(module, name), f"{module_name}.{name}"
    for private in ("_ns", "_uapi", "_wgkernel", "_wgtypes"):
        assert importlib.import_module(f"cloudmig.network.{private}").__doc__
