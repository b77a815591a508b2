-- Reservations of one (sku, channel) against its availability hash; shared by reserve, release, peek.
--
-- KEYS[1] availability hash (field `quantity`), KEYS[2] reservations (hash: reservation id -> quantity),
-- KEYS[3] expiry times (sorted set: reservation id -> expiry in epoch ms), KEYS[4] the change stream.
-- The server's clock decides expiry, so every checkout service agrees on it.

local function now_ms()
  local t = redis.call("TIME")
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function purge(now)
  local expired = redis.call("ZRANGEBYSCORE", KEYS[3], "-inf", now)
  for _, id in ipairs(expired) do
    redis.call("HDEL", KEYS[2], id)
    redis.call("ZREM", KEYS[3], id)
  end
end

local function reserved()
  local total = 0
  for _, qty in ipairs(redis.call("HVALS", KEYS[2])) do total = total + tonumber(qty) end
  return total
end

local function quantity()
  return tonumber(redis.call("HGET", KEYS[1], "quantity") or "0") or 0
end

local function publish(op, id, qty, free)
  redis.call("XADD", KEYS[4], "MAXLEN", "~", ARGV[1], "*", "entity", "availability", "key", KEYS[1], "op", op,
    "sku", ARGV[2], "channel", ARGV[3], "reservation_id", id, "reserved", tostring(qty), "available", tostring(free))
end

-- Keys of reservations vanish on their own once the last one expired (an abandoned cart leaves nothing).
local function expire_with_last()
  local last = redis.call("ZRANGE", KEYS[3], -1, -1, "WITHSCORES")
  if #last == 2 then
    redis.call("PEXPIREAT", KEYS[2], last[2])
    redis.call("PEXPIREAT", KEYS[3], last[2])
  end
end
