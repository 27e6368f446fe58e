"""The kind smoke test imports the e2e suite's helpers (node_support, operator_support,
plugin_support) by bare name, as the e2e tests do."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "e2e"))
