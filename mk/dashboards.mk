# Grafana dashboards built as code (hack/dashboards.py, Grafana Foundation SDK) into
# charts/qsys-operator/dashboards/; tests/unit/test_dashboards.py fails when they drift.
.PHONY: dashboards
dashboards: install
	$(BIN)/python hack/dashboards.py
