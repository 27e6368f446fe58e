"""Hardened QRC gateway in front of a Q-SYS Core."""

from importlib.metadata import version

# The one version of the project is pyproject.toml's (docs/install.md "Versions").
__version__ = version("qsys-operator")
