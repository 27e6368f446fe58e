"""Kopf operator that manages qsys-gateway deployments."""

from importlib.metadata import version

# The one version of the project is pyproject.toml's (docs/install.md "Versions").
__version__ = version("qsys-operator")
