"""Real-time inventory: the movement ledger, stock levels, channel availability and reservations.

`Ledger` is the durable state (`ledger.py`), `Movement` its input
(`movements.py`), `ChannelRules` the job file's `inventory:` section
(`rules.py`). `jobs.inventory` runs it against Kafka; docs/inventory.md is
the user's guide.
"""

from kanal.core.inventory.ledger import Changes, Ledger, Reservation, StockLevel
from kanal.core.inventory.movements import Movement
from kanal.core.inventory.rules import Channel, ChannelRules

__all__ = ["Changes", "Channel", "ChannelRules", "Ledger", "Movement", "Reservation", "StockLevel"]
