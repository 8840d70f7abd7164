"""`python -m bittrader_node_agent.throttle` (Windows' scheduled tasks run it with pythonw.exe)."""

import sys

from .cli import main

sys.exit(main())
