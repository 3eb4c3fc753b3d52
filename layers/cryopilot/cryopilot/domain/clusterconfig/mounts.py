"""Where the cluster's storage appears on every node. A module of its own because the plan of a run
(Validate) names these paths without needing the configuration's schema."""

#: The head node's EBS volume, exported to every node.
SHARED_MOUNT_DIR = "/shared"
#: The FSx for Lustre file system.
FSX_MOUNT_DIR = "/fsx"
#: Where the dataset and the results appear inside the FSx file system (under :data:`FSX_MOUNT_DIR`).
FSX_DATA_PATH = "/data"
FSX_RESULTS_PATH = "/results"
#: cryoSPARC's project directories (motion-corrected micrographs, particle stacks, every job's output):
#: on FSx, whose throughput the white paper's I/O-bound stages need, not on the ``/shared`` EBS volume
#: (which keeps the cryoSPARC install and its database only).
FSX_PROJECTS_PATH = "/projects"
FSX_PROJECT_DIR = FSX_MOUNT_DIR + FSX_PROJECTS_PATH
#: The dataset as the jobs read it: the data repository association's lazily imported S3 prefix.
FSX_DATA_DIR = FSX_MOUNT_DIR + FSX_DATA_PATH
#: A repeat run's reference (map, mask, class averages): a data repository association of its own,
#: linked to the reference's S3 folder (``campaigns/<campaign>/reference/`` of the results bucket, or
#: the folder of a map solved elsewhere), lazily imported like the data.
FSX_REFERENCE_PATH = "/reference"
FSX_REFERENCE_DIR = FSX_MOUNT_DIR + FSX_REFERENCE_PATH
#: Instance-store NVMe of compute nodes, mounted (RAID 0 when several) by ParallelCluster;
#: the cryoSPARC lanes use it as the particle cache (``--ssdpath``).
SCRATCH_MOUNT_DIR = "/scratch"
#: Below a run's results prefix (``s3://<results bucket>/runs/<run>/``): where the results
#: association (:data:`FSX_RESULTS_PATH`) and the projects association (:data:`FSX_PROJECTS_PATH`)
#: export to.
RESULTS_PREFIX = "results/"
PROJECT_PREFIX = "project/"
