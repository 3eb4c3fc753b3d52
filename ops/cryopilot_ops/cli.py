"""``cryopilot``: the operator's command line.

Commands that need the local stand-ins import them lazily; none of this runs inside Lambda.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any


def _demo(args: argparse.Namespace) -> int:
    from cryopilot_sim.demo import DemoOptions, run_demo

    options = DemoOptions(
        profile=args.profile, pace=args.speed, fail=args.fail, quiet=args.quiet, datasets=args.datasets
    )
    summary = run_demo(options)
    runs = summary.get("runs") or [summary]
    ended_as_rehearsed = all(r["status"] == options.expected_status for r in runs)
    # the rehearsal's own verdict: end status, error, mails, cleanup, and no cluster left
    passed = bool((summary.get("rehearsal") or {}).get("passed"))
    return (
        0
        if passed and ended_as_rehearsed and summary["cluster_deleted"] and not summary["clusters_left"]
        else 1
    )


def _demo_faults() -> dict[str, str]:
    """The demo's fault scenarios and the end status each expects (the simulation's own list)."""
    try:
        from cryopilot_sim.demo import FAULTS
    except ImportError:  # the simulation is not installed: no demo to rehearse
        return {"none": "SUCCEEDED"}
    return dict(FAULTS)


#: Stand-ins printed when neither a flag nor the environment gives a value ParallelCluster requires.
PLACEHOLDER_SUBNET = "subnet-00000000000000000"
PLACEHOLDER_LICENCE_ARN = "arn:aws:secretsmanager:{region}:000000000000:secret:cryopilot-licence-placeholder"


def _read_manifest_bytes(where: str, region: str) -> bytes:
    """The bytes of a local manifest file or of an ``s3://bucket/key`` object."""
    if where.startswith("s3://"):
        import boto3
        from botocore.exceptions import BotoCoreError, ClientError

        bucket, _, key = where[len("s3://") :].partition("/")
        if not bucket or not key:
            raise OSError(f"{where}: not an s3://bucket/key URI")
        try:
            body = boto3.client("s3", region_name=region).get_object(Bucket=bucket, Key=key)["Body"]
            return bytes(body.read())
        except ClientError as exc:
            raise OSError(f"{where}: cannot be read from S3 ({exc.response['Error']['Code']})") from None
        except BotoCoreError as exc:
            raise OSError(f"{where}: cannot be read from S3 ({exc})") from None
    from pathlib import Path

    path = Path(where)
    if not path.is_file():
        raise OSError(f"{where}: no such file")
    return path.read_bytes()


def _cluster_config(args: argparse.Namespace) -> int:
    from cryopilot.adapters.cluster_config import config_yaml_for
    from cryopilot.adapters.settings import Settings
    from cryopilot.core.errors import ManifestError
    from cryopilot.core.naming import cluster_name_for
    from cryopilot.domain.location import manifest_prefix
    from cryopilot.domain.manifest import parse_manifest, validation_message
    from cryopilot.domain.record import RunRecord
    from pydantic import ValidationError

    flags = {
        "AWS_REGION": args.region,  # Settings reads its region under this alias
        "head_node_subnet_id": args.head_node_subnet,
        "compute_subnet_ids": args.compute_subnets,
        "gpu8_instance_type": args.gpu8_instance_type,
        "gpu4_instance_type": args.gpu4_instance_type,
        "gpu1_instance_type": args.gpu1_instance_type,
        "fallback_gpu8_instance_types": args.gpu8_fallback_types,
        "fallback_gpu4_instance_types": args.gpu4_fallback_types,
        "fallback_gpu1_instance_types": args.gpu1_fallback_types,
        "licence_secret_arn": args.licence_secret_arn,
        "artifacts_bucket": args.artifacts_bucket,
        "results_bucket": args.results_bucket,
        "stack_name": args.stack_name,
    }
    values = {k: v for k, v in flags.items() if v is not None}
    notes: list[str] = []
    try:
        settings = Settings(**values)
        if not settings.head_node_subnet_id:
            notes.append(f"no --head-node-subnet given; showing {PLACEHOLDER_SUBNET}")
            values["head_node_subnet_id"] = PLACEHOLDER_SUBNET
        if not settings.licence_secret_arn:
            notes.append("no --licence-secret-arn given; showing a placeholder ARN")
            values["licence_secret_arn"] = PLACEHOLDER_LICENCE_ARN.format(region=settings.region)
        settings = Settings(**values)

        data = _read_manifest_bytes(args.manifest, settings.region)
        manifest = parse_manifest(data, source=args.manifest)
    except ManifestError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"cryopilot cluster-config: {exc}", file=sys.stderr)
        return 2
    except ValidationError as exc:
        print(f"cryopilot cluster-config: {validation_message(exc)}", file=sys.stderr)
        return 2

    run_id = args.run_id or f"{manifest.dataset}-manual"
    data_s3_uri = args.data_s3_uri
    if data_s3_uri is None:
        if args.manifest.startswith("s3://"):
            # What Validate does for a manifest in S3: the data is the manifest's folder.
            bucket, _, key = args.manifest[len("s3://") :].partition("/")
            data_s3_uri = f"s3://{bucket}/{manifest_prefix(key)}"
        else:
            data_s3_uri = f"s3://{settings.input_bucket}/datasets/{manifest.dataset}/"
    try:
        measure = args.manifest.startswith("s3://") or args.measure_data
        fsx, data = _storage_plan(manifest, settings, data_s3_uri if measure else None)
        notes += _storage_notes(fsx, data, settings.max_fsx_tib)
        run = RunRecord(
            run_id=run_id,
            dataset=manifest.dataset,
            cluster_name=cluster_name_for(run_id),
            data_s3_uri=data_s3_uri,
            data_bytes=None if data is None else data.bytes,
            fsx_storage_gib=fsx.capacity_gib,
            fsx_throughput_mb_per_tib=fsx.throughput_mb_per_tib,
        )
        text = config_yaml_for(run, settings)
    except ValidationError as exc:
        print(f"cryopilot cluster-config: {validation_message(exc)}", file=sys.stderr)
        return 2
    except (ValueError, ManifestError) as exc:
        print(f"cryopilot cluster-config: {exc}", file=sys.stderr)
        return 2
    for queue, types in settings.queue_compute_types().items():
        notes.append(f"{queue} compute resources, in order of preference: {' > '.join(types)}")
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    sys.stdout.write(text)
    return 0


def _storage_plan(manifest: Any, settings: Any, data_s3_uri: str | None) -> tuple[Any, Any]:
    """The storage model's FSx for ``manifest`` as Validate makes it: measured under ``data_s3_uri``
    (S3 ListObjectsV2), or, with None, for the preset's white-paper dataset."""
    import boto3
    from cryopilot.adapters.datasize import measure_prefix
    from cryopilot.domain import storage
    from cryopilot.domain.clusterconfig.mounts import FSX_DATA_DIR
    from cryopilot.domain.presets import expand

    stages = expand(manifest, data_dir=f"{FSX_DATA_DIR}/")  # the jobs' parameters (boxes, float16)
    data = None
    if data_s3_uri is not None:
        data = measure_prefix(
            boto3.client("s3", region_name=settings.region), data_s3_uri, manifest.input.glob
        )
    return storage.plan_for_manifest(manifest, stages, data, throughput=settings.fsx_throughput), data


def _storage_notes(fsx: Any, data: Any, max_tib: float) -> list[str]:
    """What the FSx size rests on, for stderr."""
    gib = 1024**3
    where = (
        f"{data.bytes / 10**12:,.2f} TB in {data.objects:,} objects measured under the data prefix"
        if data is not None
        else "data prefix not measured (pass --measure-data): sized for the preset's white-paper dataset"
    )
    lines = "; ".join(f"{x.what} {x.bytes / gib:,.0f} GiB" for x in fsx.lines)
    notes = [
        f"FSx for Lustre {fsx.deployment_type}: {fsx.capacity_gib:,} GiB at {fsx.throughput_mb_per_tib}"
        f" MB/s/TiB ({where})",
        f"storage model: {lines}; {fsx.need_gib:,} GiB with {fsx.headroom:.0%} headroom",
        f"throughput: {fsx.throughput_rule}",
    ]
    if fsx.capacity_gib > max_tib * 1024:
        notes.append(f"this run would fail at Validate: above MaxFsxTiB ({max_tib:g} TiB)")
    return notes


def _estimate(args: argparse.Namespace) -> int:
    import os

    from cryopilot.core.errors import ManifestError
    from cryopilot.domain.catalogue import (
        PRICE_OVERRIDES_ENV,
        PROFILE_FOR_PRESET,
        Catalogue,
        CostingError,
        parse_price_overrides,
    )
    from cryopilot.domain.estimate import Layout, estimate, plan_from_stages
    from cryopilot.domain.placement import compare, place

    from cryopilot_ops.estimate_view import render_comparison, render_full_vs_repeat

    kwargs: dict[str, Any] = {"region": args.region}
    spot_lines: list[str] = []
    try:
        # the deployment's overrides (as the Lambdas get them), then --price
        catalogue = Catalogue.for_deployment(os.environ.get(PRICE_OVERRIDES_ENV))
        if args.price:
            catalogue = catalogue.with_overrides(parse_price_overrides(args.price))
        if args.manifest and args.preset:
            print("cryopilot estimate: --preset applies to --profile, not to a manifest", file=sys.stderr)
            return 2
        if args.manifest:
            from cryopilot.domain.manifest import parse_manifest
            from cryopilot.domain.placement import plan
            from cryopilot.domain.presets import assumed_reference, needs_reference
            from cryopilot.domain.storage import plan_for_manifest

            data = _read_manifest_bytes(args.manifest, args.region)
            manifest = parse_manifest(data, source=args.manifest)
            profile = args.profile or PROFILE_FOR_PRESET[manifest.preset_name]
            # a repeat preset's reference is the campaign's, known at Validate: the estimate needs
            # only its box, the one a full run of this manifest extracts at
            reference = assumed_reference(manifest) if needs_reference(manifest.preset_name) else None
            planned = plan(manifest, data_dir="/fsx/data", catalogue=catalogue, reference=reference)
            the_plan = plan_from_stages(planned, profile)
            print(
                f"{manifest.dataset}: preset {manifest.preset_name}, stage times of the white paper's"
                f" {profile} dataset (Table 1)"
                + (", reference box assumed from this manifest" if reference else "")
                + "\n"
            )
            # the FSx file system the storage model gives this manifest (data: the preset's dataset)
            kwargs["storage_plan"] = plan_for_manifest(manifest, planned, None)
            wp = estimate(the_plan, Layout.whitepaper(), catalogue, **kwargs)
            cp = place(the_plan, Layout.cryopilot(), catalogue, **kwargs)
            if manifest.pipeline.capacity == "spot-where-safe" and catalogue.spot is not None:
                from cryopilot.domain.spot_policy import estimate_lines

                spot_lines = estimate_lines(planned, cp, catalogue.spot)
        elif args.preset == "repeat":
            profile = args.profile or "cgrp"
            full = compare(profile, catalogue, **kwargs)
            wp, cp = compare(profile, catalogue, preset="repeat", **kwargs)
            print(render_comparison(wp, cp))
            print(render_full_vs_repeat(full, (wp, cp)))
            return 0
        else:
            wp, cp = compare(args.profile or "cgrp", catalogue, preset=args.preset, **kwargs)
    except ManifestError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"cryopilot estimate: {exc}", file=sys.stderr)
        return 2
    except CostingError as exc:
        print(f"cryopilot estimate: {exc}", file=sys.stderr)
        return 2
    print(render_comparison(wp, cp))
    if spot_lines:
        print("\n" + "\n".join(spot_lines))
    return 0


#: Where ``cryopilot local`` writes the local stack's names and endpoint.
LOCAL_STACK_FILE = ".cryopilot/local/stack.json"


def _stack(args: argparse.Namespace) -> Any:
    from cryopilot_ops.ops import Stack

    if getattr(args, "local", False):
        return _local_stack()
    return Stack.from_cloudformation(args.stack, args.region)


def _local_stack() -> Any:
    """The stack ``cryopilot local`` serves: every AWS call goes to its loopback endpoint."""
    import json
    import os
    from pathlib import Path

    from cryopilot_ops.ops import EXIT_NOT_FOUND, OperatorError, Stack

    path = Path(os.environ.get("CRYOPILOT_LOCAL_STACK_FILE", LOCAL_STACK_FILE))
    if not path.is_file():
        raise OperatorError(
            f"no local stack is running ({path} not found): start one with `cryopilot local`",
            EXIT_NOT_FOUND,
        )
    doc = json.loads(path.read_text(encoding="utf-8"))
    endpoint = str(doc.pop("endpoint"))
    if not endpoint.startswith("http://127.0.0.1:"):
        raise OperatorError(f"{path}: the local endpoint must be on 127.0.0.1, not {endpoint}")
    os.environ["AWS_ENDPOINT_URL"] = endpoint  # every boto3 client of this process goes there
    for key, value in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing")):
        os.environ[key] = value
    os.environ.pop("AWS_SESSION_TOKEN", None)
    os.environ.pop("AWS_PROFILE", None)
    return Stack(**doc)


def _local(args: argparse.Namespace) -> int:
    from cryopilot_sim.local_server import serve

    return serve(args.profile, args.speed, args.port)


def _operator(command: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Run an operator command: its errors become one line on stderr and an exit code."""

    def run(args: argparse.Namespace) -> int:
        from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

        from cryopilot_ops.ops import EXIT_AWS, OperatorError

        try:
            return command(args)
        except OperatorError as exc:
            print(f"cryopilot {args.command}: {exc}", file=sys.stderr)
            return exc.exit_code
        except NoCredentialsError:
            print(f"cryopilot {args.command}: no AWS credentials (set a profile or keys)", file=sys.stderr)
            return EXIT_AWS
        except ClientError as exc:
            err = exc.response["Error"]
            print(f"cryopilot {args.command}: {err.get('Code')}: {err.get('Message')}", file=sys.stderr)
            return EXIT_AWS
        except BotoCoreError as exc:
            print(f"cryopilot {args.command}: {exc}", file=sys.stderr)
            return EXIT_AWS

    return run


@_operator
def _submit(args: argparse.Namespace) -> int:
    from cryopilot_ops import ops

    done = ops.submit(_stack(args), args.manifest, data_s3_uri=args.data, now=args.now)
    if done.queued:
        said = "already waiting" if done.already else "queued"
        print(
            f"{said}: run {done.run_id} waits for a free slot (MaxConcurrentRuns reached), "
            f"place {done.queue_position} in the queue; it starts by itself"
        )
    elif done.already and done.execution == "SUCCEEDED":
        print(f"already done: run {done.run_id} of this manifest succeeded; nothing was started")
    else:
        print(f"{'already submitted' if done.already else 'started'}: run {done.run_id}")
    where = "--local" if args.local else f"--stack {args.stack}"
    print(f"  follow it with: cryopilot watch {done.run_id} {where}")
    return 0


@_operator
def _status(args: argparse.Namespace) -> int:
    from cryopilot_ops import ops

    stack = _stack(args)
    if not args.run_id:
        for run in ops.list_runs(stack, args.limit):
            res = f"{run.resolution_A:.2f} Å" if run.resolution_A is not None else ""
            step = run.current_step or ""
            print(f"{run.run_id:<48} {run.status:<10} {step:<16} {res}")
        return 0
    run = ops.get_run(stack, args.run_id)
    print(ops.render_status(run, ops.execution_status(stack, args.run_id)))
    return 0


@_operator
def _campaign(args: argparse.Namespace) -> int:
    from cryopilot_ops import ops

    print(ops.campaign_view(_stack(args), args.name), end="")
    return 0


@_operator
def _watch(args: argparse.Namespace) -> int:
    from cryopilot_ops import ops

    final = ops.watch(_stack(args), args.run_id, interval=args.interval, emit=lambda t: print(t + "\n"))
    return 0 if final == "SUCCEEDED" else 1


@_operator
def _cancel(args: argparse.Namespace) -> int:
    from cryopilot_ops import ops

    step = ops.cancel(_stack(args), args.run_id, wait=not args.no_wait, interval=args.interval)
    return 0 if step.get("deleted") or args.no_wait else 1


@_operator
def _unsubscribe(args: argparse.Namespace) -> int:
    from cryopilot_ops import ops

    print(ops.unsubscribe(_stack(args), args.address, args.dataset))
    return 0


@_operator
def _report(args: argparse.Namespace) -> int:
    from pathlib import Path

    from cryopilot_ops import ops

    out = Path(args.output or f".cryopilot/reports/{args.run_id}")
    out.mkdir(parents=True, exist_ok=True)
    names = []
    for name, body in ops.report_files(_stack(args), args.run_id):
        target = out / Path(name).name
        target.write_bytes(body)
        names.append(target)
    for target in names:
        print(target)
    return 0


@_operator
def _preflight(args: argparse.Namespace) -> int:
    from cryopilot_ops import ops

    answer = ops.preflight(_stack(args), args.manifest, data_s3_uri=args.data)
    print(preflight_table(answer["checks"]))
    failed = [c["name"] for c in answer["checks"] if c["status"] == "fail"]
    if failed:
        print(f"preflight FAILED: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


#: The manifest whose cluster configuration ``cryopilot smoke`` sends with ``dryrun=true``.
SAMPLE_MANIFEST = "events/manifests/cgrp.yaml"


@_operator
def _smoke(args: argparse.Namespace) -> int:
    from pathlib import Path

    from cryopilot.adapters.settings import Settings
    from cryopilot.core.errors import ManifestError
    from cryopilot.core.naming import cluster_name_for
    from cryopilot.domain.manifest import parse_manifest

    from cryopilot_ops import ops

    stack = _stack(args)
    where = args.manifest or str(Path(__file__).resolve().parents[1].parent / SAMPLE_MANIFEST)
    try:
        manifest = parse_manifest(_read_manifest_bytes(where, stack.region), source=where)
    except (ManifestError, OSError) as exc:
        print(f"cryopilot smoke: {exc}", file=sys.stderr)
        return ops.EXIT_USAGE
    # the FSx size Validate would give the sample (its preset's white-paper dataset: not measured)
    fsx, _ = _storage_plan(manifest, Settings(AWS_REGION=stack.region), None)
    run_id = f"{manifest.dataset}-smoke"
    run = {
        "dataset": manifest.dataset,
        "cluster_name": cluster_name_for(run_id),
        "data_s3_uri": f"s3://{stack.input_bucket}/datasets/{manifest.dataset}/",
        "fsx_storage_gib": fsx.capacity_gib,
        "fsx_throughput_mb_per_tib": fsx.throughput_mb_per_tib,
        "layout": manifest.pipeline.layout,
    }
    checks = list(ops.preflight(stack)["checks"])
    checks.append(ops.smoke_dryrun(stack, run_id, run))
    checks.append(ops.smoke_bundle(stack))
    checks.extend(ops.smoke_functions(stack))
    print(preflight_table(checks))
    failed = [c["name"] for c in checks if c["status"] == "fail"]
    if failed:
        print(f"smoke FAILED: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


def preflight_table(checks: list[dict[str, str]]) -> str:
    """The checks as a plain table: check, result, what was found, and what to do."""
    width = max([len("check"), *(len(c["name"]) for c in checks)])
    lines = [f"{'check':<{width}}  result  detail", f"{'-' * width}  ------  ------"]
    for c in checks:
        lines.append(f"{c['name']:<{width}}  {c['status'].upper():<6}  {c['detail']}")
        if c["status"] != "ok" and c.get("fix"):
            lines.append(f"{'':<{width}}          -> {c['fix']}")
    return "\n".join(lines)


def _add_stack_flags(p: argparse.ArgumentParser) -> None:
    import os

    p.add_argument(
        "--local", action="store_true", help="the local stack `cryopilot local` runs, not a deployed one"
    )
    p.add_argument(
        "--stack",
        default=os.environ.get("CRYOPILOT_STACK", "cryopilot"),
        help="the deployed stack's name (default: $CRYOPILOT_STACK, else cryopilot)",
    )
    p.add_argument(
        "--region",
        default=os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1",
        help="its region (default: $AWS_REGION)",
    )


def _speed(text: str) -> float:
    """``--speed``: simulated seconds per wall-clock second, a positive finite number."""
    import math

    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(
            f"must be a positive, finite number of simulated seconds per wall-clock second (got {text!r})"
        )
    return value


def _max_demo_datasets() -> int:
    """The most datasets ``demo --datasets`` drops at once (the simulation's own bound)."""
    try:
        from cryopilot_sim.demo import MAX_DATASETS
    except ImportError:  # the simulation is not installed: no demo to run
        return 1
    return MAX_DATASETS


def _datasets(text: str) -> int:
    most = _max_demo_datasets()
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= most:
        raise argparse.ArgumentTypeError(f"must be a whole number from 1 to {most} (got {text!r})")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cryopilot", description="cryo-EM dataset in, 3D map out.")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="one whole run on the local stand-ins, shown live")
    demo.add_argument(
        "--profile",
        choices=["cgrp", "glp1r", "spike"],
        default="cgrp",
        help="which of the white paper's datasets to replay (default: cgrp)",
    )
    demo.add_argument(
        "--speed",
        type=_speed,
        default=20000.0,
        help="simulated seconds per wall-clock second while waiting (default: 20000)",
    )
    demo.add_argument(
        "--fail",
        choices=list(_demo_faults()),
        default="none",
        metavar="SCENARIO",
        help="rehearse a fault: "
        + "; ".join(f"{name} ({status})" for name, status in _demo_faults().items() if name != "none")
        + ". The run must end with that status, the error and mails the scenario expects, and no"
        " cluster left, or the command exits 1 (default: none)",
    )
    demo.add_argument(
        "--datasets",
        type=_datasets,
        default=1,
        metavar="N",
        help=f"drop N datasets at once, 1 to {_max_demo_datasets()} (default: 1)",
    )
    demo.add_argument("--quiet", action="store_true", help="no live display")
    demo.set_defaults(func=_demo)

    config = sub.add_parser(
        "cluster-config",
        help="print the ParallelCluster configuration cryopilot would send for a manifest",
        description="Print to stdout the cluster configuration YAML that cryopilot would send to the"
        " ParallelCluster API for MANIFEST. Values not given as flags come from the CRYOPILOT_*"
        " environment variables, then from the stack's defaults.",
    )
    config.add_argument("manifest", metavar="MANIFEST", help="a manifest file (YAML/JSON) or s3://bucket/key")
    config.add_argument("--run-id", help="run id (default: <dataset>-manual)")
    config.add_argument("--region", help="AWS region (default: AWS_REGION, else us-east-1)")
    config.add_argument("--head-node-subnet", metavar="SUBNET", help="head node subnet id")
    config.add_argument(
        "--compute-subnets",
        metavar="S1,S2",
        help="compute subnet ids, comma-separated (default: head node's)",
    )
    config.add_argument("--gpu8-instance-type", metavar="TYPE", help="instance type of the gpu8 queue")
    config.add_argument("--gpu4-instance-type", metavar="TYPE", help="instance type of the gpu4 queue")
    config.add_argument("--gpu1-instance-type", metavar="TYPE", help="instance type of the gpu1 queue")
    for queue in ("gpu8", "gpu4", "gpu1"):
        config.add_argument(
            f"--{queue}-fallback-types",
            metavar="T1,T2",
            help=f"further compute resources of the {queue} queue, in order of preference ('' for none)",
        )
    config.add_argument("--licence-secret-arn", metavar="ARN", help="Secrets Manager ARN of the licence")
    config.add_argument("--artifacts-bucket", metavar="BUCKET", help="bucket holding the head-node scripts")
    config.add_argument("--results-bucket", metavar="BUCKET", help="bucket the results are exported to")
    config.add_argument("--stack-name", metavar="NAME", help="stack name (tagged on every resource)")
    config.add_argument(
        "--data-s3-uri",
        metavar="URI",
        help="S3 folder of the data, ending in '/' (default: s3://<input bucket>/datasets/<dataset>/)",
    )
    config.add_argument(
        "--measure-data",
        action="store_true",
        help="list the data folder in S3 to size FSx from it, as Validate does (always done for a"
        " manifest in S3); without it a local manifest's FSx is sized for its preset's white-paper dataset",
    )
    config.set_defaults(func=_cluster_config)

    local = sub.add_parser(
        "local",
        help="run the local stack and keep it up, for the operator commands with --local",
        description="Start the whole stack locally (moto, the ParallelCluster and cryoSPARC stand-ins)"
        " and serve it on 127.0.0.1 until Ctrl-C; `cryopilot <command> --local` then works against"
        " it from another terminal.",
    )
    local.add_argument("--profile", choices=["cgrp", "glp1r", "spike"], default="cgrp")
    local.add_argument(
        "--speed",
        type=_speed,
        default=500.0,
        help="simulated seconds per wall-clock second (default 500: a CGRP run in about 5 minutes)",
    )
    local.add_argument("--port", type=int, help="port on 127.0.0.1 (default: a free one)")
    local.set_defaults(func=_local)

    est = sub.add_parser(
        "estimate",
        help="time to structure and cost, before running: the white paper's layout and cryopilot's",
        description="Estimate time to structure and cost per stage and in total, for the white paper's"
        " layout (every stage on one p4d.24xlarge) and for cryopilot's placement, side by side, with"
        " the assumptions (prices and their dates, GPU speed factors, node boot and idle times).",
    )
    what = est.add_mutually_exclusive_group()
    what.add_argument("manifest", nargs="?", metavar="MANIFEST", help="a manifest file or s3://bucket/key")
    est.add_argument(
        "--profile",
        choices=["cgrp", "glp1r", "spike"],
        help="the white paper's dataset whose stage times to use (default: cgrp; for a manifest,"
        " cgrp for movies and spike for micrographs)",
    )
    est.add_argument(
        "--preset",
        choices=["movies", "micrographs", "repeat"],
        help="with --profile: run the profile's dataset through this preset (default: its own);"
        " repeat: a repeat structure from a campaign reference, timed with the dataset's Table 1"
        " figures for the stages it keeps, and set against the full pipeline",
    )
    est.add_argument(
        "--price",
        metavar="JSON",
        help="override prices, USD per hour: '{\"p4d.24xlarge\": 21.96}' (also CRYOPILOT_PRICE_OVERRIDES)",
    )
    est.add_argument("--region", default="us-east-1", help="the prices' region (default: us-east-1)")
    est.set_defaults(func=_estimate)

    submit = sub.add_parser("submit", help="start a run from a manifest (local file or s3://)")
    submit.add_argument("manifest", metavar="MANIFEST", help="a manifest file, or s3://bucket/key")
    submit.add_argument(
        "--data",
        metavar="S3_FOLDER",
        help="with a local manifest: the S3 folder of the data (default: s3://<input>/datasets/<dataset>/)",
    )
    submit.add_argument(
        "--now",
        action="store_true",
        help="start at once even when MaxConcurrentRuns runs are going (the run takes no slot)",
    )
    _add_stack_flags(submit)
    submit.set_defaults(func=_submit)

    status = sub.add_parser("status", help="a run's stages and progress (or the recent runs)")
    status.add_argument("run_id", nargs="?", metavar="RUN_ID")
    status.add_argument("--limit", type=int, default=20, help="how many recent runs to list")
    _add_stack_flags(status)
    status.set_defaults(func=_status)

    campaign = sub.add_parser(
        "campaign", help="every run of a campaign: compound, date, resolution, particles, time, cost, links"
    )
    campaign.add_argument("name", metavar="NAME")
    _add_stack_flags(campaign)
    campaign.set_defaults(func=_campaign)

    watch = sub.add_parser("watch", help="show a run's progress until it ends")
    watch.add_argument("run_id", metavar="RUN_ID")
    watch.add_argument("--interval", type=float, default=30.0, help="seconds between updates")
    _add_stack_flags(watch)
    watch.set_defaults(func=_watch)

    cancel = sub.add_parser("cancel", help="stop a run and delete its cluster")
    cancel.add_argument("run_id", metavar="RUN_ID")
    cancel.add_argument("--no-wait", action="store_true", help="do not wait until the cluster is gone")
    cancel.add_argument("--interval", type=float, default=30.0, help="seconds between checks")
    _add_stack_flags(cancel)
    cancel.set_defaults(func=_cancel)

    report = sub.add_parser("report", help="download a run's report (Markdown, HTML, PNG)")
    report.add_argument("run_id", metavar="RUN_ID")
    report.add_argument("--output", metavar="DIR", help="where to write it (default .cryopilot/reports/RUN)")
    _add_stack_flags(report)
    report.set_defaults(func=_report)

    unsub = sub.add_parser(
        "unsubscribe",
        help="stop an address receiving a dataset's mails, or any mail",
        description="A manifest's notify addresses receive the mails of the datasets that listed"
        " them. Take one dataset away from an address (--dataset), or end its subscription.",
    )
    unsub.add_argument("address", metavar="ADDRESS")
    unsub.add_argument("--dataset", help="only this dataset's mails (default: every mail)")
    _add_stack_flags(unsub)
    unsub.set_defaults(func=_unsubscribe)

    pre = sub.add_parser(
        "preflight",
        help="check that the stack's account can run a cluster (and a manifest's data), in seconds",
        description="Run the checks Validate makes before any cluster exists, through the stack's"
        " Validate function: EC2 vCPU quotas, instance-type offerings, each subnet's route out, the"
        " licence secret, the ParallelCluster API's version, the results bucket's region, the mail"
        " subscriptions and, with MANIFEST, its data. Prints a table; exits 1 if any check fails.",
    )
    pre.add_argument(
        "manifest", nargs="?", metavar="MANIFEST", help="a local manifest file or s3://bucket/key"
    )
    pre.add_argument("--data", metavar="S3_FOLDER", help="with a local manifest: its data folder")
    _add_stack_flags(pre)
    pre.set_defaults(func=_preflight)

    smoke = sub.add_parser(
        "smoke",
        help="check a deployed stack end to end without cost: preflight, a cluster dryrun, the head"
        " node's files, every function",
        description="Run preflight; send the cluster configuration of a sample manifest to the"
        " ParallelCluster API with dryrun=true (HTTP 412: it would succeed; nothing is created);"
        " check the head node's files against the SHA-256 bundle.json lists; check every function of"
        " the stack may be invoked (and StartRun ignores a harmless event). Prints a table; exits 1"
        " if any check fails.",
    )
    smoke.add_argument(
        "manifest",
        nargs="?",
        metavar="MANIFEST",
        help=f"the manifest to dry-run (default: {SAMPLE_MANIFEST})",
    )
    _add_stack_flags(smoke)
    smoke.set_defaults(func=_smoke)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())


__all__ = ["build_parser", "main"]
