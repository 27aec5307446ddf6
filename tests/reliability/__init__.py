"""Reliability suite (see README.md). A package, so that its conftest module does not take the
name ``conftest`` from ``tests/conftest.py`` that other test modules import."""
