"""cryopilot: the shared package behind every Lambda of the stack (deployed as a layer)."""

__version__ = "0.1.0"
