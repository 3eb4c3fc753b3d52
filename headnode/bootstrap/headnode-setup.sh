#!/usr/bin/env bash
# headnode-setup.sh: the OnNodeConfigured action of a cryopilot cluster's head node.
#
# ParallelCluster runs it as root once the head node is configured (Slurm running, /shared and
# /fsx mounted), with the arguments of cryopilot.clusterconfig.headnode_setup_args(). It:
#
#   1. reads the cryoSPARC licence id from Secrets Manager (only when cryoSPARC must be installed);
#   2. installs cryoSPARC master + worker (--cryosparc-version) into <shared-dir>/cryosparc (the
#      install and its database only: projects go to --project-dir, on FSx for Lustre), runs
#      the master under systemd (unit cryopilot-cryosparc.service) as the cluster's default user,
#      and creates the cryoSPARC user the agent logs in as;
#   3. registers one cryoSPARC cluster lane per Slurm queue of --lanes (lane name = queue name);
#   4. installs the cryopilot agent as /usr/local/bin/cryopilot-agent (the command the controller
#      runs through SSM) and records the run id in /etc/cryopilot/run-id;
#   5. sets clustermgtd's insufficient_capacity_timeout (--insufficient-capacity-timeout, seconds) in
#      /etc/parallelcluster/slurm_plugin/parallelcluster_clustermgtd.conf: how long a compute resource
#      whose node failed to launch for lack of EC2 capacity stays disabled while its queue's next
#      compute resource takes the jobs (ParallelCluster user guide, "Slurm cluster fast insufficient
#      capacity fail-over"; clustermgtd reads the file on every loop, so no restart is needed).
#
# Running it again on a node where cryoSPARC is installed skips the installation (and the licence)
# and only restarts cryoSPARC, re-registers the lanes and refreshes the agent.
#
# Layout of the bootstrap prefix (--bootstrap-uri, s3://bucket/prefix/ ending in '/'):
#
#   <bootstrap-uri>headnode-setup.sh             this script
#   <bootstrap-uri>cryosparc-cluster-script.sh   lane submission template (@PARTITION@ and
#                                                @GPUS_PER_NODE@ are filled in per lane)
#   <bootstrap-uri>cryopilot-agent.zip           zip whose root holds the package directories
#                                                cryopilot_agent/ and cryopilot/ (the agent
#                                                imports cryopilot.agent_protocol and
#                                                cryopilot.presets, with its data/ and presets/)
#
# Secrets:
#   * The licence id is read into a shell variable. It reaches cryoSPARC's download server on
#     curl's standard input (a config read with --config -, so not in any process's arguments)
#     and the installers through the CRYOSPARC_LICENSE_ID environment variable of their own
#     processes; the installers are passed it as --license "${CRYOSPARC_LICENSE_ID}" (expanded in
#     the installer's own shell, because --license is the option the installers take), so it is in
#     the installer process's arguments while the installer runs, and in nobody else's. cryoSPARC
#     itself stores it in cryosparc_master/config.sh and cryosparc_worker/config.sh, which this
#     script makes readable by the cryoSPARC user only (0600). It is never printed: the
#     installers' output goes through a filter that masks it before it reaches the log.
#   * The cryoSPARC password of the agent's user is generated here (openssl rand) and kept in
#     /etc/cryopilot/cryosparc.env (root only, 0600), which the agent wrapper reads; it is
#     passed to `cryosparcm createuser` on the command line (the only way that command takes it)
#     and never logged. The head node needs no permission to write any secret.
#
# Progress goes to stderr and to /var/log/cryopilot-setup.log, with timestamps.
#
# Environment (for tests and unusual images; all optional):
#   CRYOPILOT_ROOT            prefix of every system location written (/etc/cryopilot,
#                             /etc/systemd/system, /usr/local/bin, /var/log); default: none
#   CRYOPILOT_PYTHON          Python (>= 3.10) for the agent's venv; default: the newest of
#                             python3.12, python3.11, python3.10, python3 (installing python3.12
#                             with dnf when none is recent enough)
#   CRYOPILOT_CRYOSPARC_USER  Unix user running cryoSPARC; default: the OS's default user
#                             (ec2-user, ubuntu, rocky), which exists with the same uid on every
#                             node of the cluster

set -euo pipefail
umask 022

readonly PROG=headnode-setup.sh
readonly CRYOSPARC_BASE_PORT=39000
# The agent's dependencies, pinned to the versions the project tests with. pydantic 2.14 and
# boto3 1.44 need Python 3.10 or later. cryosparc-tools' major.minor must match cryoSPARC's.
readonly CRYOSPARC_TOOLS_VERSION=5.0.3
readonly AGENT_REQUIREMENTS=(
    "cryosparc-tools==${CRYOSPARC_TOOLS_VERSION}"
    "pydantic==2.14.3"
    "PyYAML==6.0.3"
    "boto3==1.44.5"
)
readonly MIN_PYTHON=3.10
readonly AGENT_ZIP=cryopilot-agent.zip
readonly LANE_TEMPLATE=cryosparc-cluster-script.sh
readonly AGENT_EMAIL=cryopilot@cryopilot.local
readonly AGENT_USERNAME=cryopilot
readonly UNIT_NAME=cryopilot-cryosparc.service
readonly UUID_RE='^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$'

readonly SYS_ROOT="${CRYOPILOT_ROOT:-}"
readonly ETC_DIR="${SYS_ROOT}/etc/cryopilot"
readonly CRED_FILE="${ETC_DIR}/cryosparc.env"
readonly RUN_ENV_FILE="${ETC_DIR}/run.env"
readonly RUN_ID_FILE="${ETC_DIR}/run-id"
readonly SYSTEMD_DIR="${SYS_ROOT}/etc/systemd/system"
readonly BIN_DIR="${SYS_ROOT}/usr/local/bin"
readonly WRAPPER="${BIN_DIR}/cryopilot-agent"
readonly LOG_DIR="${SYS_ROOT}/var/log"
readonly LOG_FILE="${LOG_DIR}/cryopilot-setup.log"
readonly CLUSTERMGTD_CONF="${SYS_ROOT}/etc/parallelcluster/slurm_plugin/parallelcluster_clustermgtd.conf"

# Secrets: only ever in these variables (see the header).
licence=""
password=""

log_ready=""
work_dir=""

usage() {
    cat >&2 <<'EOF'
usage: headnode-setup.sh --region REGION --licence-secret-arn ARN --cryosparc-version VERSION
                         --bootstrap-uri s3://BUCKET/PREFIX/ --results-uri s3://BUCKET/PREFIX/
                         --run-id RUN_ID --lanes QUEUE:GPUS[,QUEUE:GPUS...]
                         --shared-dir DIR --data-dir DIR --results-dir DIR --project-dir DIR
                         --cache-dir DIR

Installs cryoSPARC, registers one lane per Slurm queue and installs the cryopilot agent on a
ParallelCluster head node. Every argument but --insufficient-capacity-timeout is required; none is
secret (the licence is read from
the Secrets Manager secret ARN).

Optional: --insufficient-capacity-timeout SECONDS (clustermgtd's insufficient_capacity_timeout).
EOF
}

usage_error() {
    printf '%s: %s\n' "${PROG}" "$1" >&2
    usage
    exit 2
}

log() {
    local stamp line
    stamp=$(date -u +%Y-%m-%dT%H:%M:%SZ)
    line="${stamp} cryopilot-setup: $*"
    printf '%s\n' "${line}" >&2
    if [[ -n "${log_ready}" ]]; then
        printf '%s\n' "${line}" >>"${LOG_FILE}"
    fi
}

fail() {
    log "ERROR: $*"
    exit 1
}

# Copies its input to the log file with the secrets masked (nothing reaches stdout or stderr).
redact_to_log() {
    local line
    while IFS= read -r line || [[ -n "${line}" ]]; do
        if [[ -n "${licence}" ]]; then
            line=${line//"${licence}"/<licence>}
        fi
        if [[ -n "${password}" ]]; then
            line=${line//"${password}"/<password>}
        fi
        printf '    | %s\n' "${line}" >>"${LOG_FILE}"
    done
}

on_exit() {
    local status=$?
    licence=""
    password=""
    if [[ -n "${work_dir}" && -d "${work_dir}" ]]; then
        rm -rf -- "${work_dir}"
    fi
    if ((status != 0)); then
        log "setup FAILED (exit status ${status}); details in ${LOG_FILE}"
    fi
    exit "${status}"
}

# --- arguments -----------------------------------------------------------------------------------

region=""
licence_secret_arn=""
cryosparc_version=""
bootstrap_uri=""
results_uri=""
run_id=""
lanes_arg=""
shared_dir=""
data_dir=""
results_dir=""
project_dir=""
cache_dir=""
capacity_timeout=""
lane_names=()
lane_gpus=()

parse_args() {
    while (($# > 0)); do
        case "$1" in
            --region | --licence-secret-arn | --cryosparc-version | --bootstrap-uri | --results-uri | \
                --run-id | --lanes | --shared-dir | --data-dir | --results-dir | --project-dir | \
                --cache-dir)
                if (($# < 2)) || [[ -z "$2" || "$2" == --* ]]; then
                    usage_error "$1 needs a value"
                fi
                case "$1" in
                    --region) region=$2 ;;
                    --licence-secret-arn) licence_secret_arn=$2 ;;
                    --cryosparc-version) cryosparc_version=$2 ;;
                    --bootstrap-uri) bootstrap_uri=$2 ;;
                    --results-uri) results_uri=$2 ;;
                    --run-id) run_id=$2 ;;
                    --lanes) lanes_arg=$2 ;;
                    --shared-dir) shared_dir=$2 ;;
                    --data-dir) data_dir=$2 ;;
                    --results-dir) results_dir=$2 ;;
                    --project-dir) project_dir=$2 ;;
                    --cache-dir) cache_dir=$2 ;;
                    *) usage_error "unknown argument $1" ;;
                esac
                shift 2
                ;;
            --insufficient-capacity-timeout)
                if (($# < 2)) || [[ -z "$2" || "$2" == --* ]]; then
                    usage_error "$1 needs a value"
                fi
                capacity_timeout=$2
                shift 2
                ;;
            -h | --help)
                usage
                exit 0
                ;;
            --*) usage_error "unknown argument $1" ;;
            *) usage_error "unexpected positional argument" ;;
        esac
    done

    local name value
    for name in region licence_secret_arn cryosparc_version bootstrap_uri results_uri run_id \
        lanes_arg shared_dir data_dir results_dir project_dir cache_dir; do
        value=${!name}
        if [[ -z "${value}" ]]; then
            name=${name//_/-}
            usage_error "--${name%-arg} is required"
        fi
    done

    [[ "${region}" =~ ^[a-z]{2}(-[a-z]+)+-[0-9]$ ]] || usage_error "--region is not an AWS region"
    [[ -z "${capacity_timeout}" || "${capacity_timeout}" =~ ^[1-9][0-9]{0,5}$ ]] ||
        usage_error "--insufficient-capacity-timeout must be a whole number of seconds"
    [[ "${licence_secret_arn}" =~ ^arn:aws[a-z-]*:secretsmanager:[a-z0-9-]+:[0-9]{12}:secret:[A-Za-z0-9/_+=.@-]+$ ]] ||
        usage_error "--licence-secret-arn is not the ARN of a Secrets Manager secret"
    [[ "${cryosparc_version}" =~ ^[0-9]+\.[0-9]+(\.[0-9]+)?(\+[0-9]+)?$ ]] ||
        usage_error "--cryosparc-version is not a cryoSPARC version (e.g. 5.0.3)"
    [[ "${bootstrap_uri}" =~ ^s3://[a-z0-9][a-z0-9.-]+[a-z0-9]/([^/[:space:]]+/)*$ ]] ||
        usage_error "--bootstrap-uri must look like s3://bucket/prefix/ (ending in '/')"
    [[ "${results_uri}" =~ ^s3://[a-z0-9][a-z0-9.-]+[a-z0-9]/([^/[:space:]]+/)*$ ]] ||
        usage_error "--results-uri must look like s3://bucket/prefix/ (ending in '/')"
    [[ "${run_id}" =~ ^[^[:cntrl:]]{1,128}$ ]] || usage_error "--run-id must be 1 to 128 printable characters"
    for name in shared_dir data_dir results_dir project_dir cache_dir; do
        value=${!name}
        [[ "${value}" == /* && "${value}" != *[[:space:]]* ]] ||
            usage_error "--${name//_/-} must be an absolute path without spaces"
    done
    shared_dir=${shared_dir%/}
    data_dir=${data_dir%/}
    results_dir=${results_dir%/}
    project_dir=${project_dir%/}
    cache_dir=${cache_dir%/}

    local lane queue gpus
    local -a lanes
    IFS=, read -r -a lanes <<<"${lanes_arg}"
    ((${#lanes[@]} > 0)) || usage_error "--lanes is empty"
    for lane in "${lanes[@]}"; do
        [[ "${lane}" =~ ^([a-z][a-z0-9-]{0,24}):([1-9][0-9]{0,2})$ ]] ||
            usage_error "--lanes must be QUEUE:GPUS_PER_NODE[,...] (e.g. gpu8:8,gpu1:1)"
        queue=${BASH_REMATCH[1]}
        gpus=${BASH_REMATCH[2]}
        for name in "${lane_names[@]}"; do
            [[ "${name}" != "${queue}" ]] || usage_error "--lanes names queue ${queue} twice"
        done
        lane_names+=("${queue}")
        lane_gpus+=("${gpus}")
    done

    # The agent's cryosparc-tools must have cryoSPARC's major.minor.
    local tools_minor=${CRYOSPARC_TOOLS_VERSION%.*} version_minor
    version_minor=$(printf '%s' "${cryosparc_version%%+*}" | cut -d. -f1-2)
    [[ "${version_minor}" == "${tools_minor}" ]] ||
        usage_error "--cryosparc-version ${cryosparc_version} does not match the agent's cryosparc-tools ${CRYOSPARC_TOOLS_VERSION}"
}

# --- helpers -------------------------------------------------------------------------------------

setup_logging() {
    mkdir -p -- "${LOG_DIR}"
    if [[ ! -e "${LOG_FILE}" ]]; then
        (umask 027 && : >"${LOG_FILE}")
    fi
    log_ready=1
}

# Runs a command as the cryoSPARC user in a directory: as_service_user DIR COMMAND [ARG...]
as_service_user() {
    local dir=$1
    shift
    # shellcheck disable=SC2016 # the child shell expands its own positional parameters
    runuser -u "${service_user}" -- bash -c 'cd -- "$1" && shift && exec "$@"' cryopilot "${dir}" "$@"
}

# Runs a cryoSPARC installer as the cryoSPARC user: run_installer DIR [INSTALLER ARG...]
# The licence travels in the installer's environment and is expanded in its own shell.
run_installer() {
    local dir=$1
    shift
    # shellcheck disable=SC2016 # expanded by the installer's shell, so that it is in no other argv
    CRYOSPARC_LICENSE_ID="${licence}" runuser -u "${service_user}" -- bash -c \
        'cd -- "$1" && shift && exec ./install.sh --license "${CRYOSPARC_LICENSE_ID}" "$@"' \
        cryopilot "${dir}" "$@" </dev/null
}

s3_get() {
    local key=$1 dest=$2
    aws s3 cp --region "${region}" --only-show-errors "${bootstrap_uri}${key}" "${dest}"
}

# --- steps ---------------------------------------------------------------------------------------

service_user=""
install_dir=""
master_dir=""
worker_dir=""
cryosparcm=""
install_marker=""

pick_service_user() {
    if [[ -n "${CRYOPILOT_CRYOSPARC_USER:-}" ]]; then
        service_user=${CRYOPILOT_CRYOSPARC_USER}
    else
        local os_id=""
        if [[ -r /etc/os-release ]]; then
            # shellcheck source=/dev/null
            os_id=$(. /etc/os-release && printf '%s' "${ID:-}")
        fi
        case "${os_id}" in
            ubuntu) service_user=ubuntu ;;
            rocky) service_user=rocky ;;
            *) service_user=ec2-user ;;
        esac
    fi
    local uid
    uid=$(id -u "${service_user}" 2>/dev/null) || fail "the cryoSPARC user ${service_user} does not exist"
    ((uid != 0)) || fail "cryoSPARC must not run as root: set CRYOPILOT_CRYOSPARC_USER to another user"
    log "cryoSPARC runs as ${service_user}"
}

read_licence() {
    local raw
    raw=$(aws secretsmanager get-secret-value --region "${region}" --secret-id "${licence_secret_arn}" \
        --query SecretString --output text) || fail "could not read the licence secret ${licence_secret_arn}"
    # JSON with licence_id/license_id, or the bare id. The value goes through stdin only.
    licence=$(printf '%s' "${raw}" | python3 -c '
import json
import sys

raw = sys.stdin.read().strip()
value = raw
if raw.startswith("{"):
    try:
        doc = json.loads(raw)
    except ValueError:
        sys.exit("the licence secret looks like JSON but does not parse")
    value = doc.get("licence_id") or doc.get("license_id") or ""
    if not isinstance(value, str):
        sys.exit("licence_id in the licence secret is not a string")
sys.stdout.write(value.strip())
') || {
        raw=""
        fail "could not read a licence id from the secret ${licence_secret_arn}"
    }
    raw=""
    if [[ ! "${licence}" =~ ${UUID_RE} ]]; then
        licence=""
        fail "the secret ${licence_secret_arn} does not hold a cryoSPARC licence id (a UUID, as a plain" \
            "string or as licence_id/license_id in JSON)"
    fi
    log "licence id read from ${licence_secret_arn}"
}

# curl reads its URL (which contains the licence) from stdin, so it is in no process's arguments.
download_cryosparc() {
    local package=$1 dest=$2
    printf 'url = "https://get.cryosparc.com/download/%s-v%s/%s"\noutput = "%s"\n' "${package}" \
        "${cryosparc_version%%+*}" "${licence}" "${dest}" |
        curl --fail --silent --show-error --location --retry 5 --retry-delay 10 --config - 2>&1 |
        redact_to_log
}

install_cryosparc() {
    read_licence
    local host
    host=$(hostname -f 2>/dev/null || true)
    [[ -n "${host}" ]] || host=$(hostname)

    mkdir -p -- "${install_dir}"
    chown -- "${service_user}:" "${install_dir}"
    local package tarball
    for package in master worker; do
        tarball="${work_dir}/cryosparc_${package}.tar.gz"
        log "downloading cryoSPARC ${package} v${cryosparc_version%%+*}"
        download_cryosparc "${package}" "${tarball}"
        rm -rf -- "${install_dir}/cryosparc_${package}"
        tar -xzf "${tarball}" -C "${install_dir}"
        rm -f -- "${tarball}"
        [[ -x "${install_dir}/cryosparc_${package}/install.sh" ]] ||
            fail "the cryoSPARC ${package} package has no cryosparc_${package}/install.sh"
        chown -R -- "${service_user}:" "${install_dir}/cryosparc_${package}"
    done

    log "running the cryoSPARC master installer (database ${install_dir}/database, port ${CRYOSPARC_BASE_PORT})"
    run_installer "${master_dir}" --hostname "${host}" --dbpath "${install_dir}/database" \
        --port "${CRYOSPARC_BASE_PORT}" --yes 2>&1 | redact_to_log
    # cryoSPARC 4.4+ ships its own CUDA: the worker installer needs no --cudapath. Lanes set the
    # cache directory (cluster_info.json cache_path), so the worker needs no --ssdpath either.
    log "running the cryoSPARC worker installer"
    run_installer "${worker_dir}" --yes 2>&1 | redact_to_log

    # config.sh holds the licence: readable by the cryoSPARC user only (compute nodes run the
    # worker as that same user).
    local config
    for config in "${master_dir}/config.sh" "${worker_dir}/config.sh"; do
        if [[ -e "${config}" ]]; then
            chown -- "${service_user}:" "${config}"
            chmod 600 -- "${config}"
        fi
    done
    # The installer may have started the master; from now on systemd runs it. Stopping a master
    # that is not running fails, which is fine.
    # shellcheck disable=SC2310 # neither function relies on set -e
    as_service_user "${install_dir}" "${cryosparcm}" stop 2>&1 | redact_to_log || true
    printf '%s\n' "${cryosparc_version}" >"${install_marker}"
    licence=""
}

write_unit() {
    mkdir -p -- "${SYSTEMD_DIR}"
    cat >"${SYSTEMD_DIR}/${UNIT_NAME}" <<EOF
# Written by headnode-setup.sh (cryopilot): the cryoSPARC master of this cluster.
[Unit]
Description=cryoSPARC master (cryopilot)
After=network-online.target remote-fs.target
Wants=network-online.target
RequiresMountsFor=${shared_dir}

[Service]
Type=oneshot
RemainAfterExit=yes
User=${service_user}
WorkingDirectory=${install_dir}
ExecStart=${cryosparcm} start
ExecStop=${cryosparcm} stop
TimeoutStartSec=900

[Install]
WantedBy=multi-user.target
EOF
}

start_cryosparc() {
    write_unit
    systemctl daemon-reload
    systemctl enable "${UNIT_NAME}"
    systemctl restart "${UNIT_NAME}"
}

# The cryoSPARC user the agent logs in as; its password lives only in the root-only env file.
ensure_agent_user() {
    if [[ -s "${CRED_FILE}" ]] && grep -q '^CRYOSPARC_PASSWORD=.' "${CRED_FILE}"; then
        log "the agent's cryoSPARC user exists (credentials in ${CRED_FILE})"
        return 0
    fi
    password=$(openssl rand -hex 24)
    [[ "${password}" =~ ^[0-9a-f]{48}$ ]] || fail "openssl did not produce a password"
    # shellcheck disable=SC2310 # neither function relies on set -e
    if ! as_service_user "${install_dir}" "${cryosparcm}" createuser --email "${AGENT_EMAIL}" \
        --password "${password}" --username "${AGENT_USERNAME}" --firstname cryopilot \
        --lastname agent 2>&1 | redact_to_log; then
        log "createuser failed (the user may exist from an earlier attempt): resetting its password"
        as_service_user "${install_dir}" "${cryosparcm}" resetpassword --email "${AGENT_EMAIL}" \
            --password "${password}" 2>&1 | redact_to_log
    fi
    mkdir -p -- "${ETC_DIR}"
    local tmp="${CRED_FILE}.tmp"
    rm -f -- "${tmp}"
    (
        umask 077
        {
            printf '# cryoSPARC connection of cryopilot-agent (written by headnode-setup.sh; root only)\n'
            printf 'CRYOSPARC_BASE_URL=http://localhost:%s\n' "${CRYOSPARC_BASE_PORT}"
            printf 'CRYOSPARC_EMAIL=%s\n' "${AGENT_EMAIL}"
            printf 'CRYOSPARC_PASSWORD=%s\n' "${password}"
        } >"${tmp}"
    )
    chmod 600 -- "${tmp}"
    mv -f -- "${tmp}" "${CRED_FILE}"
    password=""
    log "created the agent's cryoSPARC user ${AGENT_EMAIL} (credentials in ${CRED_FILE})"
}

register_lanes() {
    s3_get "${LANE_TEMPLATE}" "${work_dir}/${LANE_TEMPLATE}"
    local template
    template=$(<"${work_dir}/${LANE_TEMPLATE}")

    # cryoSPARC runs these commands from its own environment: use Slurm's absolute paths.
    if [[ -d /opt/slurm/bin ]]; then
        PATH="${PATH}:/opt/slurm/bin"
    fi
    local sbatch slurm_bin
    sbatch=$(command -v sbatch) || fail "sbatch not found (is Slurm installed?)"
    slurm_bin=$(dirname -- "${sbatch}")

    local i name gpus lane_dir script
    for i in "${!lane_names[@]}"; do
        name=${lane_names[i]}
        gpus=${lane_gpus[i]}
        lane_dir="${install_dir}/lanes/${name}"
        mkdir -p -- "${lane_dir}"
        script=${template//@PARTITION@/${name}}
        script=${script//@GPUS_PER_NODE@/${gpus}}
        printf '%s\n' "${script}" >"${lane_dir}/cluster_script.sh"
        python3 -c '
import json
import sys

path, name, worker_bin, cache, slurm_bin = sys.argv[1:]
info = {
    "name": name,
    "title": name,
    "worker_bin_path": worker_bin,
    "cache_path": cache,
    "cache_reserve_mb": 10000,
    "send_cmd_tpl": "{{ command }}",
    "qsub_cmd_tpl": slurm_bin + "/sbatch {{ script_path_abs }}",
    "qstat_cmd_tpl": slurm_bin + "/squeue -j {{ cluster_job_id }}",
    "qdel_cmd_tpl": slurm_bin + "/scancel {{ cluster_job_id }}",
    "qinfo_cmd_tpl": slurm_bin + "/sinfo",
}
with open(path, "w") as out:
    json.dump(info, out, indent=2)
    out.write("\n")
' "${lane_dir}/cluster_info.json" "${name}" "${worker_dir}/bin/cryosparcw" "${cache_dir}" "${slurm_bin}"
        chown -R -- "${service_user}:" "${lane_dir}"
        as_service_user "${lane_dir}" "${cryosparcm}" cluster connect 2>&1 | redact_to_log
        log "lane ${name}: partition ${name}, ${gpus} GPU(s) per node, cache ${cache_dir}"
    done
}

agent_python=""

pick_python() {
    local -a candidates=(python3.12 python3.11 python3.10 python3)
    if [[ -n "${CRYOPILOT_PYTHON:-}" ]]; then
        candidates=("${CRYOPILOT_PYTHON}")
    fi
    local attempt candidate version
    for attempt in 1 2; do
        for candidate in "${candidates[@]}"; do
            command -v "${candidate}" >/dev/null 2>&1 || continue
            version=$("${candidate}" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null) ||
                continue
            if "${candidate}" -c "import sys; sys.exit(sys.version_info[:2] < (${MIN_PYTHON/./, }))" \
                >/dev/null 2>&1; then
                agent_python=$(command -v "${candidate}")
                log "agent Python: ${agent_python} (${version})"
                return 0
            fi
        done
        # Amazon Linux 2023's python3 is 3.9; its repositories have python3.12.
        if [[ "${attempt}" == 1 && -z "${CRYOPILOT_PYTHON:-}" ]] && command -v dnf >/dev/null 2>&1; then
            log "no Python >= ${MIN_PYTHON}: installing python3.12 with dnf"
            dnf install -y python3.12 >>"${LOG_FILE}" 2>&1 || true
        else
            break
        fi
    done
    fail "no Python >= ${MIN_PYTHON} for the agent (set CRYOPILOT_PYTHON)"
}

install_agent() {
    local agent_home="${shared_dir}/cryopilot"
    local venv="${agent_home}/venv" agent_dir="${agent_home}/agent"
    mkdir -p -- "${agent_home}"

    s3_get "${AGENT_ZIP}" "${work_dir}/${AGENT_ZIP}"
    pick_python

    if [[ ! -x "${venv}/bin/python" ]]; then
        if ! "${agent_python}" -c 'import ensurepip' >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
            local version
            version=$("${agent_python}" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
            log "installing python${version}-venv"
            apt-get install -y "python${version}-venv" 2>&1 | redact_to_log
        fi
        "${agent_python}" -m venv "${venv}" 2>&1 | redact_to_log
    fi
    local wanted installed=""
    wanted=$(printf '%s\n' "${AGENT_REQUIREMENTS[@]}")
    if [[ -r "${venv}/.cryopilot-requirements" ]]; then
        installed=$(<"${venv}/.cryopilot-requirements")
    fi
    if [[ "${installed}" != "${wanted}" ]]; then
        log "installing ${AGENT_REQUIREMENTS[*]}"
        "${venv}/bin/python" -m pip install --disable-pip-version-check --no-input --quiet \
            "${AGENT_REQUIREMENTS[@]}" 2>&1 | redact_to_log
        printf '%s\n' "${wanted}" >"${venv}/.cryopilot-requirements"
    else
        log "agent requirements already installed"
    fi

    # Unpack next to the live copy, check the layout, then swap.
    local staging="${agent_home}/agent.new"
    rm -rf -- "${staging}" "${agent_home}/agent.old"
    mkdir -p -- "${staging}"
    if command -v unzip >/dev/null 2>&1; then
        unzip -q -o "${work_dir}/${AGENT_ZIP}" -d "${staging}" 2>&1 | redact_to_log
    else
        python3 -m zipfile -e "${work_dir}/${AGENT_ZIP}" "${staging}" 2>&1 | redact_to_log
    fi
    [[ -f "${staging}/cryopilot_agent/__main__.py" && -f "${staging}/cryopilot/protocol/agent.py" ]] ||
        fail "${AGENT_ZIP} must hold cryopilot_agent/ and cryopilot/ at its root"
    if [[ -d "${agent_dir}" ]]; then
        mv -- "${agent_dir}" "${agent_home}/agent.old"
    fi
    mv -- "${staging}" "${agent_dir}"
    rm -rf -- "${agent_home}/agent.old"
    chmod -R a+rX -- "${agent_dir}"

    mkdir -p -- "${ETC_DIR}" "${BIN_DIR}"
    {
        printf '# Settings of this cryopilot run (written by headnode-setup.sh; not secret)\n'
        printf 'AWS_DEFAULT_REGION=%q\n' "${region}"
        printf 'AWS_REGION=%q\n' "${region}"
        printf 'CRYOPILOT_RUN_ID=%q\n' "${run_id}"
        printf 'CRYOPILOT_RESULTS_URI=%q\n' "${results_uri}"
        printf 'CRYOPILOT_DATA_DIR=%q\n' "${data_dir}"
        printf 'CRYOPILOT_RESULTS_DIR=%q\n' "${results_dir}"
        printf 'CRYOPILOT_PROJECT_ROOT=%q\n' "${project_dir}"
    } >"${RUN_ENV_FILE}"
    chmod 644 -- "${RUN_ENV_FILE}"

    local tmp="${WRAPPER}.tmp"
    {
        printf '#!/usr/bin/env bash\n'
        printf '# cryopilot-agent: the head-node agent (written by headnode-setup.sh).\n'
        printf '# Reads the run settings and the cryoSPARC credentials (root only), then runs the agent.\n'
        printf 'set -euo pipefail\n'
        printf 'set -a\n'
        printf '# shellcheck source=/dev/null\n'
        printf '. %q\n' "${RUN_ENV_FILE}"
        printf '# shellcheck source=/dev/null\n'
        printf '. %q\n' "${CRED_FILE}"
        printf 'set +a\n'
        printf 'export PYTHONPATH=%q\n' "${agent_dir}"
        printf 'exec %q -m cryopilot_agent "$@"\n' "${venv}/bin/python"
    } >"${tmp}"
    chmod 755 -- "${tmp}"
    mv -f -- "${tmp}" "${WRAPPER}"
    log "agent installed: ${WRAPPER} (package in ${agent_dir}, venv ${venv})"
}

prepare_directories() {
    # cryoSPARC's projects live on FSx (the I/O-bound stages read and write them); /shared keeps the
    # install and the database.
    mkdir -p -- "${project_dir}" "${results_dir}"
    chown -- "${service_user}:" "${install_dir}" "${project_dir}" "${results_dir}"
    if [[ ! -d "${data_dir}" ]]; then
        log "warning: the data directory ${data_dir} does not exist (yet)"
    fi
    if [[ ! -d "${cache_dir}" ]]; then
        log "note: ${cache_dir} is the compute nodes' cache; it does not exist on the head node"
    fi
}

record_run_id() {
    mkdir -p -- "${ETC_DIR}"
    printf '%s\n' "${run_id}" >"${RUN_ID_FILE}"
    chmod 644 -- "${RUN_ID_FILE}"
}

step() {
    local name=$1
    shift
    log "${name}: start"
    "$@"
    log "${name}: done"
}

# Sets (or adds) insufficient_capacity_timeout in the [clustermgtd] section of clustermgtd's config.
set_capacity_timeout() {
    if [[ -z "${capacity_timeout}" ]]; then
        log "no --insufficient-capacity-timeout: clustermgtd keeps its own"
        return 0
    fi
    if [[ ! -f "${CLUSTERMGTD_CONF}" ]]; then
        log "WARNING: ${CLUSTERMGTD_CONF} not found (not a ParallelCluster head node?):" \
            "insufficient_capacity_timeout not set"
        return 0
    fi
    local tmp="${work_dir}/clustermgtd.conf" present=0
    if grep -Eq '^[[:space:]]*insufficient_capacity_timeout[[:space:]]*=' "${CLUSTERMGTD_CONF}"; then
        present=1
    fi
    # Replaces the setting where it is, or adds it first in the [clustermgtd] section.
    awk -v value="${capacity_timeout}" -v present="${present}" '
        BEGIN { done = 0 }
        /^[[:space:]]*insufficient_capacity_timeout[[:space:]]*=/ {
            if (!done) { print "insufficient_capacity_timeout = " value; done = 1 }
            next
        }
        { print }
        /^\[clustermgtd\][[:space:]]*$/ && !present && !done {
            print "insufficient_capacity_timeout = " value
            done = 1
        }
        END { if (!done) { print "[clustermgtd]"; print "insufficient_capacity_timeout = " value } }
    ' "${CLUSTERMGTD_CONF}" >"${tmp}"
    cat -- "${tmp}" >"${CLUSTERMGTD_CONF}"
    log "clustermgtd insufficient_capacity_timeout = ${capacity_timeout} s"
}

main() {
    parse_args "$@"
    setup_logging
    trap on_exit EXIT
    work_dir=$(mktemp -d "${TMPDIR:-/tmp}/cryopilot-setup.XXXXXX")

    install_dir="${shared_dir}/cryosparc"
    master_dir="${install_dir}/cryosparc_master"
    worker_dir="${install_dir}/cryosparc_worker"
    cryosparcm="${master_dir}/bin/cryosparcm"
    install_marker="${install_dir}/.cryopilot-installed"

    log "setting up the head node of run ${run_id} (cryoSPARC ${cryosparc_version}, lanes ${lanes_arg})"
    mkdir -p -- "${ETC_DIR}"
    chmod 755 -- "${ETC_DIR}"
    step "cryoSPARC user" pick_service_user
    mkdir -p -- "${install_dir}"
    step "directories" prepare_directories
    if [[ -f "${install_marker}" && -x "${cryosparcm}" ]]; then
        log "cryoSPARC $(<"${install_marker}") is installed in ${install_dir}: not installing it again"
    else
        step "cryoSPARC installation" install_cryosparc
    fi
    step "cryoSPARC start" start_cryosparc
    step "agent's cryoSPARC user" ensure_agent_user
    step "cryoSPARC lanes" register_lanes
    step "agent installation" install_agent
    step "run id" record_run_id
    step "insufficient capacity timeout" set_capacity_timeout
    log "head node ready: cryoSPARC on port ${CRYOSPARC_BASE_PORT}, lanes ${lane_names[*]}, agent ${WRAPPER}"
}

main "$@"
