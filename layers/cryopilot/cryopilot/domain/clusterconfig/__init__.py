"""The ParallelCluster 3.x cluster configuration cryopilot sends, as pydantic models.

The configuration is built from two inputs (:mod:`.params`):

* :class:`~.params.ClusterParams` — stack-level settings (subnets, instance types, buckets, sizes),
  the same for every run of one deployment;
* :class:`~.params.ClusterRequest` — what one run needs (run id, dataset, S3 prefixes, extra tags).

:func:`~.build.build_cluster_config` turns them into a :class:`~.models.ClusterConfig` and
:func:`~.build.render_yaml` into the YAML document the ParallelCluster API's ``createCluster`` takes
(PascalCase keys, unset fields left out). There are no string templates: every key is a model field,
and every configuration this package can produce is loaded with ``aws-parallelcluster``'s own
``ClusterSchema`` in the tests.

The modules (import a name from the module that defines it; this file exports nothing):

* :mod:`.version` — :data:`~.version.PCLUSTER_VERSION`, the ParallelCluster version targeted;
* :mod:`.mounts` — where the shared volume, FSx and the scratch disks appear on the nodes;
* :mod:`.models` — the configuration's schema, ``ClusterConfig`` and its sections;
* :mod:`.params` — the inputs, their validation and the capacity fallbacks (the placements the
  cluster step tries in turn);
* :mod:`.build` — the builder, the YAML text, the head-node setup arguments, the FSx size and the
  mount points.

Targets ParallelCluster :data:`~.version.PCLUSTER_VERSION`. Facts checked against its schema and
validators:

* cluster names: a letter, then letters, digits and hyphens, 5 to 60 characters
  (``PCLUSTER_NAME_REGEX``/``PCLUSTER_NAME_MAX_LENGTH``; the API's models add the minimum of 5);
* queue and compute-resource names: ``^[a-z][a-z0-9-]*$``, at most 25 characters;
  shared-storage names at most 30;
* FSx for Lustre data repository associations (DRAs) exist only for ``PERSISTENT_2`` file systems
  and exclude ``ImportPath``/``ExportPath``; ``PERSISTENT_2`` capacity is 1200 GiB or a multiple of
  2400 GiB and needs ``PerUnitStorageThroughput`` in {125, 250, 500, 1000};
* the head node's security group always gets an SSH ingress rule from ``HeadNode/Ssh/AllowedIps``
  (default ``0.0.0.0/0``, even without a key pair): cryopilot sets it to ``127.0.0.1/32`` so that rule
  admits nothing from the network — operators reach the head node through SSM.

The head node's ``OnNodeConfigured`` action runs ``headnode-setup.sh`` from the bootstrap prefix with
the arguments of :func:`~.build.headnode_setup_args`: non-secret values only. The script reads the
cryoSPARC licence from Secrets Manager itself, so the licence never appears in the configuration, the
CloudFormation stack, a process list or a log line.
"""
