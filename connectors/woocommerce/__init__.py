"""WooCommerce connector: REST API v3 source and sink (products and variations, prices, stock, customers).

As a sink it writes through the `/batch` endpoints, by SKU and email, with
the shop's ids kept in the job's sink memory; as a source it pages through
the lists and follows `modified_after` deltas. `simulator` is a WooCommerce
of our own for tests and manual tries. Configuration: `WooConfig`; per
entity: `WooOptions`.
"""

from kanal.connectors.woocommerce.config import WooConfig, WooOptions
from kanal.connectors.woocommerce.sink import ENTITIES, WooSink
from kanal.connectors.woocommerce.source import WooSource
from kanal.core.connector import Capabilities, ConnectorSpec, DeltaKind

CONNECTOR = ConnectorSpec(
    name="woocommerce",
    description="WooCommerce shop over REST API v3: products and variations by SKU, list prices, stock, customers",
    config=WooConfig,
    capabilities=Capabilities(
        entities=ENTITIES, supports_deletes=True, delta=(DeltaKind.NONE, DeltaKind.CURSOR), skip_unchanged=True
    ),
    source=WooSource,
    sink=WooSink,
)

__all__ = ["CONNECTOR", "WooConfig", "WooOptions", "WooSink", "WooSource"]
