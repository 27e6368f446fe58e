"""Hardened QRC gateway in front of a Q-SYS Core."""

__version__ = "0.1.0"
