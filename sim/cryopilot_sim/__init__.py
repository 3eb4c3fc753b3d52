"""Local stand-ins and the offline harness: cryopilot without AWS, without Docker."""
