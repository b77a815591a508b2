-- ARGV: maxlen, sku, channel, reservation id
-- Returns {released (1, or 0 when the id holds nothing: released before, expired, never made), available after}.
local id = ARGV[4]
purge(now_ms())
local held = redis.call("HGET", KEYS[2], id)
if not held then return {0, tostring(quantity() - reserved())} end
redis.call("HDEL", KEYS[2], id)
redis.call("ZREM", KEYS[3], id)
local free = quantity() - reserved()
publish("release", id, held, free)
return {1, tostring(free)}
