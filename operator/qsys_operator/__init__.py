"""Kopf operator that manages qsys-gateway deployments."""

__version__ = "0.1.0"
