"""The mail subscriptions of ``notify`` addresses on the stack's SNS topic (the rule of which
datasets an address receives: :mod:`cryopilot.domain.subscriptions`).

SNS keeps one subscription per topic, protocol and address: ``Subscribe`` again with the same
attributes answers the existing subscription's ARN, with other attributes it refuses
(``InvalidParameter``), and without attributes it answers the ARN and changes nothing
(``ReturnSubscriptionArn`` gives the ARN of a subscription still pending confirmation, too).
"""

from __future__ import annotations

from typing import Any

from botocore.exceptions import ClientError

from cryopilot.domain.subscriptions import policy_for, with_dataset

#: What SNS answers when the topic holds as many filter policies as its quota allows (200 a topic
#: by default) or the account as many subscriptions (SNS API reference, Subscribe: Errors).
LIMIT_CODES = ("FilterPolicyLimitExceeded", "SubscriptionLimitExceeded")


def subscribe(sns: Any, topic_arn: str, address: str, dataset: str) -> None:
    """Make ``address`` receive ``dataset``'s mails, keeping every other dataset it receives."""
    try:
        sns.subscribe(
            TopicArn=topic_arn,
            Protocol="email",
            Endpoint=address,
            Attributes={"FilterPolicy": policy_for([dataset])},
            ReturnSubscriptionArn=True,
        )
        return  # a new subscription, or one with exactly this policy
    except ClientError as exc:
        if exc.response["Error"]["Code"] != "InvalidParameter":
            raise
    # the address is subscribed already, with another policy: add this dataset to it
    arn = sns.subscribe(TopicArn=topic_arn, Protocol="email", Endpoint=address, ReturnSubscriptionArn=True)[
        "SubscriptionArn"
    ]
    current = sns.get_subscription_attributes(SubscriptionArn=arn)["Attributes"].get("FilterPolicy")
    merged = with_dataset(current, dataset)
    if merged is not None:
        sns.set_subscription_attributes(
            SubscriptionArn=arn, AttributeName="FilterPolicy", AttributeValue=merged
        )


#: What ListSubscriptionsByTopic shows for the ARN of a subscription still pending confirmation.
PENDING = "PendingConfirmation"
#: SNS deletes a subscription left unconfirmed this long after it was made, and cannot delete one
#: pending confirmation before (SNS developer guide, "Deleting an Amazon SNS subscription and
#: topic"; 48 hours since May 2023, 72 before).
PENDING_EXPIRY_HOURS = 48


def find(sns: Any, topic_arn: str, address: str) -> str | None:
    """The ARN of ``address``'s email subscription to the topic, :data:`PENDING` for one still
    pending confirmation (SNS gives no ARN to delete it by); None when it has none."""
    for page in sns.get_paginator("list_subscriptions_by_topic").paginate(TopicArn=topic_arn):
        for sub in page.get("Subscriptions", []):
            if sub.get("Protocol") != "email" or sub.get("Endpoint") != address:
                continue
            arn = str(sub.get("SubscriptionArn") or "")
            return arn if arn.startswith("arn:") else PENDING
    return None


def filter_policy(sns: Any, arn: str) -> str | None:
    """The subscription's filter policy (None: it receives every mail)."""
    return sns.get_subscription_attributes(SubscriptionArn=arn)["Attributes"].get("FilterPolicy") or None
