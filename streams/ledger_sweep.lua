-- tracewatch ledger: remove, from a batch of bucket hashes, the entries whose packed value's
-- time is older than a cutoff (the retention sweep). Atomic like every script, so it never
-- races the worker's writes: an entry rewritten between two batches is judged on its new value.
--
-- KEYS: per bucket, the bucket hash and then its overflow hash.
-- ARGV[1]: the cutoff, in seconds since the codec's EPOCH (may be negative);
-- ARGV[2]: what the buckets hold, which says where the time is:
--   "code"   a code state: header byte, then (unless the header's bit 0x80 is set) 4 bytes of
--            last_time, big-endian; with that bit, a zigzag varint;
--   "person" a person state: the same with bit 0x02 (the latest purchase or alert time);
--   "sale"   the sale index: a varint count, the codes (header varint 0: 9 bytes follow,
--            else header - 1 bytes), then 2 bytes of day stamp, big-endian (none: no time);
-- ARGV[3]: "1" to count only (dry run), "0" to remove.
-- ARGV[4]: for "code", the key prefix of the shared states: an entry that refers to one
--   (shared_slot and shared_state, ledger_reference.lua, which comes before this file) is
--   judged on that state's time, and removed when the state has expired. These keys are not
--   in KEYS (a single Redis, not a cluster).
-- A marker in the bucket (is_marker, ledger_overflow.lua, which comes first) says the value
-- lives in the overflow hash, in pieces or whole.
-- Entries are only deleted (HDEL), so a listpack bucket stays listpack; an emptied bucket
-- disappears. Expiries are left as they are.
-- Returns {buckets that exist, entries seen, entries older than the cutoff, entries without a
-- readable time (kept), MEMORY USAGE before and after of the buckets that lost entries (with
-- their overflow hashes)}.

local STEP = 4000 -- well below Lua's unpack() limit
local cutoff = tonumber(ARGV[1])
local mode = ARGV[2]
local dry = ARGV[3] == '1'
local shared = ARGV[4] or ''
local shared_found = {}
local DAY = 86400

-- the unsigned varint at pos, and the position after it (nil when it runs off the end)
local function uvarint(value, pos)
  local result, scale = 0, 1
  for p = pos, pos + 9 do
    local byte = string.byte(value, p)
    if not byte then return nil end
    if byte < 128 then return result + byte * scale, p + 1 end
    result = result + (byte - 128) * scale
    scale = scale * 128
  end
  return nil
end

local function state_time(value, varint_bit)
  local header = string.byte(value, 1)
  if not header then return nil end
  if bit.band(header, varint_bit) == 0 then
    if #value < 5 then return nil end
    local a, b, c, d = string.byte(value, 2, 5)
    return ((a * 256 + b) * 256 + c) * 256 + d
  end
  local zigzag = uvarint(value, 2)
  if not zigzag then return nil end
  if zigzag % 2 == 0 then return zigzag / 2 end
  return -(zigzag + 1) / 2
end

-- the last second of the sale entry's stamped day (so a whole day must be past the cutoff)
local function sale_time(value)
  local count, pos = uvarint(value, 1)
  if not count then return nil end
  for _ = 1, count do
    local header
    header, pos = uvarint(value, pos)
    if not header then return nil end
    pos = pos + (header == 0 and 9 or header - 1)
  end
  if #value - pos + 1 ~= 2 then return nil end
  local a, b = string.byte(value, pos, pos + 1)
  return (a * 256 + b + 1) * DAY - 1
end

local function packed_time(value)
  if mode == 'code' then return state_time(value, 128) end
  if mode == 'person' then return state_time(value, 2) end
  return sale_time(value)
end

-- the shared state an entry refers to (false when it has expired), or nil for another entry
local function referred(value)
  if shared == '' then return nil end
  local high, low = shared_slot(value)
  if not high then return nil end
  local state = shared_found[value]
  if state == nil then
    state = shared_state(shared, high, low)
    shared_found[value] = state
  end
  return state
end

local function usage(key)
  return tonumber(redis.call('MEMORY', 'USAGE', key, 'SAMPLES', '0')) or 0
end

local function delete(key, names)
  for s = 1, #names, STEP do
    redis.call('HDEL', key, unpack(names, s, math.min(s + STEP - 1, #names)))
  end
end

local present, seen, old, unreadable, before, after = 0, 0, 0, 0, 0, 0
for k = 1, #KEYS, 2 do
  local bucket, overflow = KEYS[k], KEYS[k + 1]
  local flat = redis.call('HGETALL', bucket)
  if #flat > 0 then
    present = present + 1
    local names, overs = {}, {}
    for i = 1, #flat, 2 do
      local value = flat[i + 1]
      local marker = #value <= 1 and is_marker(value) and value
      if marker then value = overflow_value(overflow, flat[i], marker) end
      local moment
      if value then
        local state = referred(value)
        if state == false then
          moment = cutoff - 1 -- its shared state expired with the retention
        else
          moment = packed_time(state or value)
        end
      end
      seen = seen + 1
      if not moment then
        unreadable = unreadable + 1
      elseif moment < cutoff then
        names[#names + 1] = flat[i]
        if marker then
          for _, name in ipairs(piece_names(flat[i], marker)) do overs[#overs + 1] = name end
        end
      end
    end
    if #names > 0 then
      old = old + #names
      local size = usage(bucket) + usage(overflow)
      before = before + size
      if not dry then
        delete(bucket, names)
        if #overs > 0 then delete(overflow, overs) end
        size = usage(bucket) + usage(overflow)
      end
      after = after + size
    end
  end
end
return {present, seen, old, unreadable, before, after}
