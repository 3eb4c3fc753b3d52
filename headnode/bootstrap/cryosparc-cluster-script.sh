#!/usr/bin/env bash
# cryoSPARC cluster-lane submission script for one Slurm queue of a cryopilot cluster.
#
# Two rounds of substitution make the final script:
#   1. headnode-setup.sh fills in the markers PARTITION (the Slurm partition = queue = cryoSPARC
#      lane name, e.g. gpu8) and GPUS_PER_NODE (GPUs on one node of that queue), each written
#      between two '@', when it registers the lane;
#   2. cryoSPARC renders the result as a Jinja template for every job it queues on the lane,
#      filling in num_gpu, num_cpu, ram_gb, run_cmd, job_log_path_abs, project_uid, job_uid, ...
#
# The Jinja expressions sit only in comments (#SBATCH lines), in a quoted string and in a quoted
# here-document, so the file is also a plain shell script that shellcheck can check as it is.
#
# The job asks Slurm for exactly what cryoSPARC says it needs: its GPUs (--gres), its CPUs and its
# memory, on one node of the lane's partition.
#
#SBATCH --job-name=cryosparc_{{ project_uid }}_{{ job_uid }}
#SBATCH --partition=@PARTITION@
#SBATCH --nodes=1
#SBATCH --ntasks=1
#SBATCH --cpus-per-task={{ num_cpu }}
#SBATCH --gres=gpu:{{ num_gpu }}
#SBATCH --mem={{ (ram_gb * 1000) | int }}M
#SBATCH --output={{ job_log_path_abs }}
#SBATCH --error={{ job_log_path_abs }}

# A job that needs more GPUs than one node of this queue has would wait forever: refuse it.
requested_gpus="{{ num_gpu }}"
node_gpus="@GPUS_PER_NODE@"
if ((requested_gpus > node_gpus)); then
    echo "cryoSPARC job {{ project_uid }}/{{ job_uid }} asks for ${requested_gpus} GPUs;" \
        "nodes of partition @PARTITION@ have ${node_gpus}" >&2
    exit 1
fi

# cryoSPARC's command line, run exactly as cryoSPARC wrote it (it carries its own redirections).
run_cmd=$(
    cat <<'CRYOSPARC_RUN_CMD'
{{ run_cmd }}
CRYOSPARC_RUN_CMD
)
eval "${run_cmd}"
