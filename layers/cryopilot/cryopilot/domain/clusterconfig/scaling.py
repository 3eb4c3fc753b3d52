"""How Slurm scales the cluster's compute nodes down, in a module of its own: the report and the
estimate price a node's idle time with it without loading the cluster's inputs or schema."""

#: Slurm ``ScaledownIdletime`` of the clusters cryopilot builds, in minutes: a dynamic compute
#: node idle this long is powered down (and billed until then).
SCALEDOWN_IDLE_MINUTES = 5
SCALEDOWN_IDLE_SECONDS = SCALEDOWN_IDLE_MINUTES * 60

#: clustermgtd's ``insufficient_capacity_timeout`` on cryopilot's head nodes, in seconds (ParallelCluster
#: user guide, "Slurm cluster fast insufficient capacity fail-over": default 600 s, set in
#: /etc/parallelcluster/slurm_plugin/parallelcluster_clustermgtd.conf, changeable without stopping the
#: compute fleet). A compute resource whose node failed to launch for capacity stays disabled this long,
#: so the queue's next compute resource takes the jobs meanwhile; then the preferred type is tried again.
#: 1800 s rather than the default: an EC2 shortage of a large GPU type usually lasts hours, and every
#: retry of the preferred type delays the job that tries it by a failed resume (about a clustermgtd loop),
#: while a node already up on the fallback type keeps taking the stage's jobs at no extra delay.
INSUFFICIENT_CAPACITY_TIMEOUT_SECONDS = 1800
