"""Fixtures of the network tests (root only); the helpers live in netlab.py."""

from netlab import lab  # noqa: F401  (the fixture)
