"""Redis connector: a sink writing the availability read model into Redis or Valkey, plus reservations.

The sink keeps one hash per `availability` (sku, channel) and `stock_levels`
(sku, location) record, version-checked inside Redis by a Lua script, and
appends every applied change to a stream (`layout`, `sink`).
`RedisInventory` is the small API checkout services call to read
availability and to reserve atomically (`inventory`). Without `url:` Kanal
runs an embedded Valkey (`embedded`). Configuration: `RedisConfig`.
"""

from kanal.connectors.redis.config import RedisConfig
from kanal.connectors.redis.inventory import RedisInventory, Reservation
from kanal.connectors.redis.sink import ENTITIES, MAX_BATCH_ROWS, RedisSink
from kanal.core.connector import Capabilities, ConnectorSpec

CONNECTOR = ConnectorSpec(
    name="redis",
    description="Redis or Valkey (embedded without url:): availability and stock levels as version-checked hashes, "
    "a change stream, atomic reservations",
    config=RedisConfig,
    capabilities=Capabilities(entities=ENTITIES, supports_deletes=True, max_batch_rows=MAX_BATCH_ROWS),
    sink=RedisSink,
)

__all__ = ["CONNECTOR", "MAX_BATCH_ROWS", "RedisConfig", "RedisInventory", "RedisSink", "Reservation"]
