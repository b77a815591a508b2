-- ARGV: maxlen, sku, channel
-- Returns {quantity, reserved} after dropping expired reservations.
purge(now_ms())
return {tostring(quantity()), tostring(reserved())}
