# CRDs generated from the pydantic models in operator/qsys_operator/api.
.PHONY: crds crds-check

crds: install
	$(BIN)/python -m qsys_operator.crdgen

crds-check: install
	$(BIN)/python -m qsys_operator.crdgen --check

# The chart carries copies of crds/ (Helm only installs files inside the chart);
# tests/unit/test_chart.py fails when they drift.
.PHONY: chart-crds
chart-crds:
	rm -f charts/qsys-operator/crds/*.yaml
	cp crds/*.yaml charts/qsys-operator/crds/
