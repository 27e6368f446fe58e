# CRDs generated from the pydantic models in operator/qsys_operator/api, and the
# chart's CRD templates (charts/qsys-operator/templates/crds/) generated from crds/.
.PHONY: crds crds-check

crds: install
	$(BIN)/python -m qsys_operator.crdgen

crds-check: install
	$(BIN)/python -m qsys_operator.crdgen --check
