import sys

from cryopilot_agent.cli import main

sys.exit(main())
