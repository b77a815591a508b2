"""Shopify connector: the Admin GraphQL API, source and sink.

As a sink it writes products with their variants (`productSet`), list
prices as variant prices, stock levels per location
(`inventorySetQuantities`), the availability `kanal inventory` computes for
one sales channel (as the `available` quantity of one location) and
customers, in batched mutations or, for large writes, one bulk operation;
as a source it exports products, prices, stock levels and customers by bulk
query and follows their changes by `updated_at` searches (availability is
Kanal's own figure: the source does not read it). A simulator of the API
for tests and trials is `kanal.connectors.shopify.simulator`.
Configuration: `ShopifyConfig`; per entity: `ShopifyOptions`.
"""

from __future__ import annotations

from kanal.connectors.shopify.config import ShopifyConfig, ShopifyOptions
from kanal.connectors.shopify.sink import ENTITIES, ShopifySink
from kanal.connectors.shopify.source import ShopifySource
from kanal.core.connector import Capabilities, ConnectorSpec, DeltaKind

CONNECTOR = ConnectorSpec(
    name="shopify",
    description=(
        "Shopify Admin GraphQL API: products and variants, prices, stock per location, customers (source and sink); "
        "channel availability from `kanal inventory` (sink only)"
    ),
    config=ShopifyConfig,
    capabilities=Capabilities(
        entities=ENTITIES,  # the sink's: the source refuses availability (`source.ENTITIES`)
        supports_deletes=True,
        skip_unchanged=True,
        delta=(DeltaKind.NONE, DeltaKind.CURSOR),
    ),
    source=ShopifySource,
    sink=ShopifySink,
)

__all__ = ["CONNECTOR", "ShopifyConfig", "ShopifyOptions", "ShopifySink", "ShopifySource"]
