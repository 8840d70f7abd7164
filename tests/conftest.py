"""Every test imports the node agent from its source (node_agent/src), as the nodes run it once its
wheel is installed: nothing to install for the tests."""

import sys
from pathlib import Path

AGENT_SRC = str(Path(__file__).resolve().parents[1] / "node_agent" / "src")
if AGENT_SRC not in sys.path:
    sys.path.insert(0, AGENT_SRC)
