"""The engine: records, connector contracts, Kafka transport, acks, state, DLQ.

`core` imports no connector and no job code; everything above depends on it.
"""
