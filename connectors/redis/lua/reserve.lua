-- ARGV: maxlen, sku, channel, reservation id, quantity, ttl in ms
-- Returns {status, available after, expires_at ms}: status "reserved" (new), "held" (this id already
-- holds the same quantity: a retry), "insufficient" (quantity - reserved < asked), "conflict" (this id
-- holds another quantity).
local id, qty, ttl = ARGV[4], tonumber(ARGV[5]), tonumber(ARGV[6])
local now = now_ms()
purge(now)
local free = quantity() - reserved()
local held = redis.call("HGET", KEYS[2], id)
if held then
  local expires = redis.call("ZSCORE", KEYS[3], id)
  if tonumber(held) ~= qty then return {"conflict", tostring(free), expires, held} end
  return {"held", tostring(free), expires, held}
end
if free < qty then return {"insufficient", tostring(free), false, false} end
local expires = now + ttl
redis.call("HSET", KEYS[2], id, ARGV[5])
redis.call("ZADD", KEYS[3], expires, id)
expire_with_last()
publish("reserve", id, qty, free - qty)
return {"reserved", tostring(free - qty), tostring(expires), ARGV[5]}
