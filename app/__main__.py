"""``python -m app``: the loopmon desktop app (same as ``loopmon-gui``)."""
import sys

from app.main import main

sys.exit(main())
