"""What the deployment's nodes cost: each GPU queue's instance type, priced from the catalogue
with the stack's ``PriceOverrides``. The Stage and Validate steps price the limits with it."""

from __future__ import annotations

from cryopilot.adapters.settings import Settings
from cryopilot.domain import billing
from cryopilot.domain.catalogue import Catalogue, CostingError


def queue_nodes(settings: Settings, gpu8_instance_type: str | None = None) -> dict[str, billing.NodeType]:
    """Each GPU queue's node, priced from the deployment's catalogue (``PriceOverrides`` applied);
    ``gpu8_instance_type``: the type the run's placement chose. A queue whose type has no price is
    left out, and so is every queue when the overrides are malformed (then nothing has a price)."""
    try:
        catalogue = Catalogue.for_deployment(settings.price_overrides)
    except CostingError:
        return {}
    nodes = {}
    # a Spot twin is priced On-Demand: the most a Spot node is paid (its default maximum price)
    for queue, instance_type in settings.queue_instance_types(gpu8_instance_type, spot=True).items():
        try:
            nodes[queue] = billing.node_type(catalogue, instance_type, settings.region)
        except CostingError:
            continue
    return nodes
