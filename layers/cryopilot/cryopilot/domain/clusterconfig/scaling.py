"""How Slurm scales the cluster's compute nodes down, in a module of its own: the report and the
estimate price a node's idle time with it without loading the cluster's inputs or schema."""

#: Slurm ``ScaledownIdletime`` of the clusters cryopilot builds, in minutes: a dynamic compute
#: node idle this long is powered down (and billed until then).
SCALEDOWN_IDLE_MINUTES = 5
SCALEDOWN_IDLE_SECONDS = SCALEDOWN_IDLE_MINUTES * 60
