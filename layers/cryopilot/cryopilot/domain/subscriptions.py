"""Which datasets' mails an address receives: the filter policy of its one SNS subscription.

Every mail carries the message attribute ``dataset`` (:mod:`cryopilot.domain.mails`). An address a
manifest lists under ``notify`` has one email subscription to the stack's topic, whatever the
number of datasets that list it, and its filter policy is ``{"dataset": [every dataset it asked
for]}``. A subscription without a filter policy (the stack's ``NotificationEmail``) receives every
mail and is left so.
"""

from __future__ import annotations

import json
from typing import Any

#: SNS: "The total combination of values in a filter policy must not exceed 150" (Amazon SNS
#: Developer Guide, "Filter policy constraints"). The policy has one key, so 150 datasets.
MAX_DATASETS_PER_ADDRESS = 150


def policy_for(datasets: list[str]) -> str:
    """The filter policy that passes the mails of ``datasets``."""
    return json.dumps({"dataset": datasets})


def with_dataset(policy: str | None, dataset: str) -> str | None:
    """``policy`` with ``dataset`` added, or None when it is to stay as it is: the dataset is in
    it already, there is no policy (the address gets every mail), or it is not one of ours (set
    by hand with other keys). Past :data:`MAX_DATASETS_PER_ADDRESS`, the datasets added first go."""
    datasets = _datasets(policy)
    if datasets is None or dataset in datasets:
        return None
    kept = [*datasets, dataset][-MAX_DATASETS_PER_ADDRESS:]
    return policy_for(kept)


def without_dataset(policy: str | None, dataset: str) -> list[str] | None:
    """The datasets ``policy`` keeps once ``dataset`` is taken out of it; None when ``dataset`` is
    not in it (or the policy is none of ours: no policy, or other keys)."""
    datasets = _datasets(policy)
    if datasets is None or dataset not in datasets:
        return None
    return [d for d in datasets if d != dataset]


def _datasets(policy: str | None) -> list[str] | None:
    """The datasets of a policy of the shape ``{"dataset": [names]}``; None for any other."""
    if not policy:
        return None
    try:
        doc: Any = json.loads(policy)
    except ValueError:
        return None
    if not isinstance(doc, dict) or set(doc) != {"dataset"} or not isinstance(doc["dataset"], list):
        return None
    if not all(isinstance(d, str) for d in doc["dataset"]):
        return None
    return list(doc["dataset"])
