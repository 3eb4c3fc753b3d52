"""The preflight rules (cryopilot.domain.preflight): what AWS answered in, one result out."""

from __future__ import annotations

import pytest
from cryopilot.domain import preflight
from cryopilot.domain.preflight import REQUIRED_ENDPOINTS, CheckResult, NodeNeed, SubnetRoutes


@pytest.mark.parametrize(
    ("instance_type", "family"),
    [
        ("p4d.24xlarge", "P"),
        ("p5.4xlarge", "P"),
        ("g6e.12xlarge", "G"),
        ("vt1.3xlarge", "G"),
        ("m6i.2xlarge", "Standard"),
        ("c7gn.xlarge", "Standard"),
        ("im4gn.large", "Standard"),
        ("gr6.4xlarge", "G"),
        ("hpc7a.96xlarge", None),
        ("u-6tb1.metal", None),
        ("f1.2xlarge", None),
        ("x2idn.16xlarge", None),
        ("inf2.xlarge", None),
        ("trn1.32xlarge", None),
        ("dl1.24xlarge", None),
    ],
)
def test_each_type_counts_against_its_familys_quota(instance_type: str, family: str | None) -> None:
    assert preflight.quota_family(instance_type) == family


def test_the_need_is_every_queue_at_its_largest_at_once() -> None:
    needs = preflight.vcpu_needs(
        [
            NodeNeed("m6i.2xlarge", 1, 8),
            NodeNeed("p4d.24xlarge", 4, 96),
            NodeNeed("g6e.12xlarge", 4, 48),
            NodeNeed("p5.4xlarge", 8, 16),
            NodeNeed("p5.48xlarge", 2, 192, capacity_type="SPOT"),
        ]
    )
    assert {code: need for code, (_, need, _) in needs.items()} == {
        "L-1216C47A": 8,
        "L-417A185B": 4 * 96 + 8 * 16,
        "L-DB2E81BA": 4 * 48,
        "L-7212CCBC": 2 * 192,  # Spot P is its own quota
    }


def test_a_quota_below_the_need_fails_with_the_request_to_make() -> None:
    needs = preflight.vcpu_needs([NodeNeed("p4d.24xlarge", 4, 96)])
    (ok,) = preflight.check_quotas(needs, {"L-417A185B": 384.0}, "us-east-1")
    assert ok.status == "ok"
    (low,) = preflight.check_quotas(needs, {"L-417A185B": 0.0}, "us-east-1")
    assert low.status == "fail"
    assert "'Running On-Demand P instances' is 0 vCPUs" in low.detail
    assert "--quota-code L-417A185B --desired-value 384 --region us-east-1" in low.fix
    (unreadable,) = preflight.check_quotas(needs, {"L-417A185B": "AccessDeniedException"}, "us-east-1")
    assert unreadable.status == "fail"
    assert "cannot be read (AccessDeniedException)" in unreadable.detail


def test_a_type_must_be_offered_in_the_zone_of_one_of_its_subnets() -> None:
    zones = {"subnet-a": "us-east-1a", "subnet-b": "us-east-1b"}
    ok = preflight.check_offerings(
        {"p4de.24xlarge": ["subnet-a", "subnet-b"]}, zones, {"p4de.24xlarge": {"us-east-1b"}}, "us-east-1"
    )
    assert ok.status == "ok"
    bad = preflight.check_offerings(
        {"p4de.24xlarge": ["subnet-a"]}, zones, {"p4de.24xlarge": {"us-east-1b"}}, "us-east-1"
    )
    assert bad.status == "fail"
    assert bad.detail == "p4de.24xlarge is not offered in subnet-a (us-east-1a)"
    unknown = preflight.check_offerings({"m6i.2xlarge": ["subnet-x"]}, {"subnet-x": None}, {}, "us-east-1")
    assert unknown.detail == "m6i.2xlarge is not offered in subnet-x (unknown zone)"


def test_a_route_out_is_a_nat_gateway_or_every_endpoint() -> None:
    nat = preflight.check_egress(SubnetRoutes("subnet-a", "nat-1", frozenset()), "us-east-1")
    assert nat.status == "ok"
    endpoints = preflight.check_egress(
        SubnetRoutes("subnet-a", None, frozenset(REQUIRED_ENDPOINTS)), "us-east-1"
    )
    assert endpoints.status == "warn"
    assert "licence check" in endpoints.fix
    some = preflight.check_egress(SubnetRoutes("subnet-a", None, frozenset({"s3", "ec2"})), "us-east-1")
    assert some.status == "fail"
    assert "no VPC endpoint for cloudformation, dynamodb, ec2messages, logs, secretsmanager" in some.detail
    # an internet gateway is a public subnet's route, not a private head node's
    igw = preflight.check_egress(SubnetRoutes("subnet-a", "igw-1", frozenset()), "us-east-1")
    assert igw.status == "fail"
    assert igw.detail.startswith("default route to igw-1, not a NAT gateway, and no VPC endpoint for")
    missing = preflight.check_egress(
        SubnetRoutes("subnet-x", None, frozenset(), problem="the subnet does not exist"), "us-east-1"
    )
    assert (missing.status, missing.detail) == ("fail", "the subnet does not exist")


def test_the_secret_must_exist_and_not_be_scheduled_for_deletion() -> None:
    arn = "arn:aws:secretsmanager:us-east-1:123456789012:secret:lic"
    assert preflight.check_secret(arn, {"Name": "lic"}, None).status == "ok"
    assert preflight.check_secret(arn, {"Name": "lic", "DeletedDate": "2026-12-01"}, None).status == "fail"
    gone = preflight.check_secret(arn, None, "ResourceNotFoundException")
    assert (gone.status, gone.detail) == ("fail", f"{arn} cannot be described (ResourceNotFoundException)")
    assert preflight.check_secret("", None, None).detail == "CryosparcLicenceSecretArn is empty"
    # the AWS managed key needs nothing more; a customer managed one needs kms:Decrypt too
    managed = {"Name": "lic", "KmsKeyId": "alias/aws/secretsmanager"}
    assert preflight.check_secret(arn, managed, None).status == "ok"
    own = preflight.check_secret(arn, {"Name": "lic", "KmsKeyId": "arn:aws:kms:us-east-1:1:key/k"}, None)
    assert own.status == "warn"
    assert "kms:Decrypt" in own.fix


def test_the_api_must_answer_with_the_pinned_version() -> None:
    assert preflight.check_pcluster(["3.16.1", "3.16.1"], None, "3.16.1").status == "ok"
    other = preflight.check_pcluster(["3.9.0"], None, "3.16.1")
    assert (other.status, other.detail) == ("fail", "its version is 3.9.0, cryopilot targets 3.16.1")
    assert preflight.check_pcluster([], None, "3.16.1").status == "fail"
    down = preflight.check_pcluster(None, "HTTP 403", "3.16.1")
    assert (down.status, down.detail) == ("fail", "does not answer (HTTP 403)")


def test_the_data_must_hold_the_expected_files_and_the_gain_reference() -> None:
    uri = "s3://in/datasets/D/"
    ok = preflight.check_data(uri, "movies/*.tif", 5600, 5600, "gain/g.mrc", True)
    assert [r.status for r in ok] == ["ok", "ok"]
    few = preflight.check_data(uri, "movies/*.tif", 12, 5600, None, None)
    assert [(r.name, r.status) for r in few] == [("input data", "fail")]
    assert few[0].detail == f"{uri} holds 12 files matching 'movies/*.tif', input.expected_files is 5,600"
    no_gain = preflight.check_data(uri, "movies/*.tif", 3, None, "gain/g.mrc", False)
    assert [r.status for r in no_gain] == ["ok", "fail"]
    assert no_gain[1].detail == f"{uri}gain/g.mrc does not exist (acquisition.gain_reference)"


def test_the_results_bucket_is_in_the_stacks_region() -> None:
    assert preflight.check_bucket_region("r", None, None, "us-east-1").status == "ok"  # S3's null: us-east-1
    assert preflight.check_bucket_region("r", "eu-west-1", None, "eu-west-1").status == "ok"
    assert preflight.check_bucket_region("r", "EU", None, "eu-west-1").status == "ok"  # the legacy constraint
    away = preflight.check_bucket_region("r", "eu-west-1", None, "us-east-1")
    assert (away.status, away.detail) == ("fail", "r is in eu-west-1, the stack in us-east-1")


def test_no_confirmed_subscription_only_warns() -> None:
    assert preflight.check_subscriptions(1, 0, None).status == "ok"
    none = preflight.check_subscriptions(0, 2, None)
    assert none.status == "warn"
    assert "2 pending" in none.detail


def test_the_failure_message_is_one_line_naming_each_failed_check() -> None:
    results = [
        CheckResult("a", "ok", "fine"),
        CheckResult("b", "warn", "hm", "look"),
        CheckResult("c", "fail", "broken", "fix it"),
        CheckResult("d", "fail", "also\nbroken", "and this"),
    ]
    message = preflight.failure_message(results)
    assert message.startswith("preflight: c: broken; fix it | d: also")
    assert "b:" not in message
    assert "a:" not in message
    assert "\n" not in message


def test_a_fallback_type_beyond_a_quota_only_warns() -> None:
    needs = preflight.vcpu_needs([NodeNeed("p4d.24xlarge", 4, 96)])
    fallbacks = {
        "p5.48xlarge": preflight.vcpu_needs([NodeNeed("p5.48xlarge", 4, 192)]),
        "g6e.48xlarge": preflight.vcpu_needs([NodeNeed("g6e.48xlarge", 4, 192)]),
    }
    values = {"L-417A185B": 384.0, "L-DB2E81BA": 768.0}
    (warn,) = preflight.check_fallback_quotas(needs, fallbacks, values, "us-east-1")
    assert (warn.name, warn.status) == ("quota L-417A185B (fallback p5.48xlarge)", "warn")
    assert "may run 4 x p5.48xlarge at once: 768" in warn.detail
    # a quota the configured placement already fails is not warned about twice
    assert preflight.check_fallback_quotas(needs, fallbacks, {"L-417A185B": 0.0}, "us-east-1") == []


def test_a_run_that_buys_spot_needs_the_spot_quota_of_each_family_it_buys() -> None:
    from cryopilot.adapters.preflight import node_needs
    from cryopilot.adapters.settings import Settings
    from cryopilot.domain.catalogue import Catalogue

    settings = Settings()
    catalogue = Catalogue.load()
    on_demand = preflight.vcpu_needs(node_needs(settings, catalogue))
    assert not {"L-7212CCBC", "L-3819A6DF"} & set(on_demand)  # no Spot queue, no Spot quota
    spot = preflight.vcpu_needs(node_needs(settings, catalogue, spot_queues=["gpu8", "gpu4"]))
    # the Spot twins at the queues' largest counts, beside the On-Demand queues (same need there)
    assert {c: n for c, (_, n, _) in spot.items() if c in on_demand} == {
        c: n for c, (_, n, _) in on_demand.items()
    }
    gpu8 = settings.queue_instance_types()["gpu8"]
    gpu4 = settings.queue_instance_types()["gpu4"]
    assert spot["L-7212CCBC"][0] == "All P Spot Instance Requests"
    assert spot["L-7212CCBC"][2] == [f"4 x {gpu8}"]
    assert spot["L-3819A6DF"][2] == [f"4 x {gpu4}"]
    assert spot["L-7212CCBC"][1] == 4 * catalogue.instance(gpu8).vcpus
