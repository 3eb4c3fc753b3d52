"""cryopilot-agent: the head-node agent that drives cryoSPARC through cryosparc-tools.

Each verb (``submit``, ``status``, ``kill``, ``export``) does its work, prints one JSON document
(:mod:`cryopilot.protocol.agent`) and returns at once; nothing here waits on a job.
"""
