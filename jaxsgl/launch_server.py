"""`python -m jaxsgl.launch_server --model-path PATH --port 30000 ...` (SGLang's command); see jaxsgl/server/launch.py."""
from __future__ import annotations

import sys

from jaxsgl.server.launch import main

if __name__ == "__main__":
    sys.exit(main())
