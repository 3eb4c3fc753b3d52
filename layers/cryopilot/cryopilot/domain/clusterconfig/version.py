"""The ParallelCluster version cryopilot targets, in a module of its own: the inputs' checks name it
without loading the configuration's schema (about 30 models), which only the cluster step needs."""

#: The ParallelCluster version the configuration targets (and the API the stack deploys).
PCLUSTER_VERSION = "3.16.1"
