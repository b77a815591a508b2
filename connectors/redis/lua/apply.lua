-- Apply a batch of records to their hashes, version-checked, and publish each applied change.
--
-- KEYS[1]  tombstones of the entity (hash: record key -> {"v": version, "p": position} of its delete)
-- KEYS[2]  the entity's change stream
-- KEYS[2+i] the hash of record i
-- ARGV[1]  approximate MAXLEN of the stream; ARGV[2] the entity's name
-- ARGV[2+i] record i as JSON: {"o": "upsert"|"delete", "v": version, "p": position, "f": {field: text}}
--          v (the record's `version` field) and p (the source position) are non-negative decimals as text, or null
-- Returns {applied, skipped_older}.
--
-- Records of one key are applied in the order given (the engine hands them over in source order).
-- A record is older when its version is below the stored one; versions are compared when both sides
-- have one, else source positions when both have one, else the record applies. Equal applies: a
-- re-delivery rewrites the same content (and publishes nothing), and a delete and a re-insert at one
-- position keep their order.

local function nn(x)
  if x == nil or x == false or x == cjson.null then return nil end
  return x
end

local function parts(x)
  local i, f = string.match(x, "^(%d+)%.(%d+)$")
  if not i then i, f = x, "" end
  i = (string.gsub(i, "^0+", ""))
  f = (string.gsub(f, "0+$", ""))
  return i, f
end

-- Exact comparison of non-negative decimals written as text (no float rounding of large positions).
local function cmp(a, b)
  local ai, af = parts(a)
  local bi, bf = parts(b)
  if #ai ~= #bi then return #ai < #bi and -1 or 1 end
  if ai ~= bi then return ai < bi and -1 or 1 end
  local n = math.max(#af, #bf)
  af = af .. string.rep("0", n - #af)
  bf = bf .. string.rep("0", n - #bf)
  if af == bf then return 0 end
  return af < bf and -1 or 1
end

local function order(v, p, sv, sp)
  if v and sv then return cmp(v, sv) end
  if p and sp then return cmp(p, sp) end
  return nil
end

local function tombstone(key)
  local t = redis.call("HGET", KEYS[1], key)
  if not t then return nil, nil end
  t = cjson.decode(t)
  return nn(t.v), nn(t.p)
end

local function publish(key, op, v, p, fields)
  local entry = {"entity", ARGV[2], "key", key, "op", op}
  if v then table.insert(entry, "version"); table.insert(entry, v) end
  if p then table.insert(entry, "_kanal_version"); table.insert(entry, p) end
  for name, value in pairs(fields) do
    if nn(value) and name ~= "version" then table.insert(entry, name); table.insert(entry, value) end
  end
  redis.call("XADD", KEYS[2], "MAXLEN", "~", ARGV[1], "*", unpack(entry))
end

local applied, skipped = 0, 0
for i = 3, #ARGV do
  local key = KEYS[i]
  local r = cjson.decode(ARGV[i])
  local v, p = nn(r.v), nn(r.p)
  local stored = redis.call("HMGET", key, "version", "_kanal_version")
  local sv, sp = nn(stored[1]), nn(stored[2])
  local held = (sv or sp or redis.call("EXISTS", key) == 1) and true or false
  local tv, tp, c
  if held then
    c = order(v, p, sv, sp)
  else
    tv, tp = tombstone(key)
    c = order(v, p, tv, tp)
  end
  if c == -1 then
    skipped = skipped + 1
  elseif r.o == "upsert" then
    -- the record replaces the hash: its fields are set, its empty fields removed (`version` is one of them)
    local set, unset = {}, {}
    for name, value in pairs(r.f) do
      if nn(value) then set[#set + 1] = name; set[#set + 1] = value else unset[#unset + 1] = name end
    end
    if p then set[#set + 1] = "_kanal_version"; set[#set + 1] = p else unset[#unset + 1] = "_kanal_version" end
    if #set > 0 then redis.call("HSET", key, unpack(set)) end
    if held and #unset > 0 then redis.call("HDEL", key, unpack(unset)) end
    if tv or tp then redis.call("HDEL", KEYS[1], key) end
    if c ~= 0 then publish(key, "upsert", v, p, r.f) end  -- equal: a re-delivery, nothing new to tell
    applied = applied + 1
  else
    if v or p then redis.call("HSET", KEYS[1], key, cjson.encode({v = v, p = p})) end
    if held then
      redis.call("DEL", key)
      publish(key, "delete", v, p, r.f)
    end
    applied = applied + 1
  end
end
return {applied, skipped}
