"""Test helpers for users' test suites: :func:`assert_certified` and :func:`assert_property` (the same
functions as :mod:`certkit.pytest_plugin`, whose fixtures and marker pytest loads by itself)."""
from __future__ import annotations

from .pytest_plugin import assert_certified, assert_property

__all__ = ["assert_certified", "assert_property"]
