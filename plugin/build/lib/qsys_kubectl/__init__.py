"""`kubectl qsys`: a kubectl plugin for QSysCores and AccessPolicies (docs/kubectl-plugin.md)."""
