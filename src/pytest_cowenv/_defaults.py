"""Defaults that the pytest plugin and the pytest-free core share, written once.

This module imports nothing: the plugin reads it at every pytest start, before it knows
whether any test asks for an environment.
"""

DEFAULT_POOL = 2  # clones kept ready ahead of the tests, per template in use
VERSIONS_EXPIRY = 600.0  # seconds a listing of releases (versions()) is reused
