"""``cryopilot``: the operator's command line.

Commands that need the local stand-ins import them lazily; none of this runs inside Lambda.
"""

from __future__ import annotations

import argparse
import sys


def _demo(args: argparse.Namespace) -> int:
    from cryopilot_sim.demo import DemoOptions, run_demo

    summary = run_demo(DemoOptions(profile=args.profile, pace=args.speed, fail=args.fail, quiet=args.quiet))
    wanted = "FAILED" if args.fail != "none" else "SUCCEEDED"
    return 0 if summary["status"] == wanted and summary["cluster_deleted"] else 1


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
    from pydantic import ValidationError

    from cryopilot.cluster import config_yaml_for
    from cryopilot.clusterconfig import cluster_name_for
    from cryopilot.errors import ManifestError
    from cryopilot.manifest import manifest_prefix, parse_manifest, validation_message
    from cryopilot.settings import Settings

    flags = {
        "AWS_REGION": args.region,  # Settings reads its region under this alias
        "head_node_subnet_id": args.head_node_subnet,
        "compute_subnet_ids": args.compute_subnets,
        "gpu8_instance_type": args.gpu8_instance_type,
        "gpu1_instance_type": args.gpu1_instance_type,
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
        run = {
            "run_id": run_id,
            "dataset": manifest.dataset,
            "cluster_name": cluster_name_for(run_id),
            "data_s3_uri": data_s3_uri,
        }
        text = config_yaml_for(run, settings)
    except ValidationError as exc:
        print(f"cryopilot cluster-config: {validation_message(exc)}", file=sys.stderr)
        return 2
    except ValueError as exc:
        print(f"cryopilot cluster-config: {exc}", file=sys.stderr)
        return 2
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    sys.stdout.write(text)
    return 0


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
        type=float,
        default=20000.0,
        help="simulated seconds per wall-clock second while waiting (default: 20000)",
    )
    demo.add_argument(
        "--fail",
        choices=["none", "cluster-create", "job"],
        default="none",
        help="rehearse a fault: the run must end failed, mailed, cluster deleted",
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
    config.add_argument("--gpu1-instance-type", metavar="TYPE", help="instance type of the gpu1 queue")
    config.add_argument("--licence-secret-arn", metavar="ARN", help="Secrets Manager ARN of the licence")
    config.add_argument("--artifacts-bucket", metavar="BUCKET", help="bucket holding the head-node scripts")
    config.add_argument("--results-bucket", metavar="BUCKET", help="bucket the results are exported to")
    config.add_argument("--stack-name", metavar="NAME", help="stack name (tagged on every resource)")
    config.add_argument(
        "--data-s3-uri",
        metavar="URI",
        help="S3 folder of the data, ending in '/' (default: s3://<input bucket>/datasets/<dataset>/)",
    )
    config.set_defaults(func=_cluster_config)
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
