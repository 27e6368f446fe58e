# Grafana dashboards built as code (operator/qsys_operator/dashboards.py, Grafana Foundation
# SDK) into charts/qsys-operator/dashboards/; tests/unit/test_dashboards.py fails when they drift.
.PHONY: dashboards dashboards-check
dashboards: install
	$(BIN)/python -m qsys_operator.dashboards

dashboards-check: install
	$(BIN)/python -m qsys_operator.dashboards --check
