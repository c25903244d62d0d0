-- tracewatch ledger: remove, from a batch of bucket hashes, the entries whose packed state's
-- time is older than a cutoff (the retention sweep). Atomic like every script, so it never
-- races the worker's writes: an entry rewritten between two batches is judged on its new value.
--
-- KEYS: per bucket, the bucket hash and then its overflow hash.
-- ARGV[1]: the cutoff, in seconds since the codec's EPOCH (may be negative);
-- ARGV[2]: the header bit that marks a varint time (128 for code states, 2 for person
--          states): without it, bytes 2 to 5 of the value are the time, big-endian;
-- ARGV[3]: "1" to count only (dry run), "0" to remove.
-- An empty value in the bucket is a marker: the value lives in the overflow hash.
-- Entries are only deleted (HDEL), so a listpack bucket stays listpack; an emptied bucket
-- disappears. Expiries are left as they are.
-- Returns {buckets that exist, entries seen, entries older than the cutoff, unreadable entries
-- (kept), MEMORY USAGE before and after of the buckets that lost entries (with overflow)}.

local STEP = 4000 -- well below Lua's unpack() limit
local cutoff = tonumber(ARGV[1])
local varint_bit = tonumber(ARGV[2])
local dry = ARGV[3] == '1'

local function packed_time(value)
  local header = string.byte(value, 1)
  if not header then return nil end
  if bit.band(header, varint_bit) == 0 then
    if #value < 5 then return nil end
    local a, b, c, d = string.byte(value, 2, 5)
    return ((a * 256 + b) * 256 + c) * 256 + d
  end
  local result, scale = 0, 1
  for pos = 2, 11 do -- a zigzag varint of at most 10 bytes
    local byte = string.byte(value, pos)
    if not byte then return nil end
    if byte < 128 then
      result = result + byte * scale
      if result % 2 == 0 then return result / 2 end
      return -(result + 1) / 2
    end
    result = result + (byte - 128) * scale
    scale = scale * 128
  end
  return nil
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
      local marker = value == ''
      if marker then value = redis.call('HGET', overflow, flat[i]) end
      local moment = value and packed_time(value)
      seen = seen + 1
      if not moment then
        unreadable = unreadable + 1
      elseif moment < cutoff then
        names[#names + 1] = flat[i]
        if marker then overs[#overs + 1] = flat[i] end
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
