-- tracewatch ledger: write the fields of many bucket hashes in one call (one round trip).
--
-- KEYS: per group, the bucket hash and, when the group has one, its overflow hash.
-- ARGV: per group: a header "F TTL D S O" (F: 1 when the group has an overflow hash, else 0;
-- TTL: seconds), then
--   d fields to delete, s (field, value) pairs to set in the bucket, and
--   o (field, value) pairs too long for the bucket: the bucket gets an empty marker under
--   the field and the overflow hash the value.
-- Deletes run before sets. A field set in the bucket or deleted loses its overflow copy.
-- Every written key gets its expiry pushed to ttl. Returns the number of groups.

local STEP = 4000 -- even, and well below Lua's unpack() limit

local function call_range(command, key, list, first, last)
  for s = first, last, STEP do
    redis.call(command, key, unpack(list, s, math.min(s + STEP - 1, last)))
  end
end

local groups = 0
local k, p = 1, 1
while p <= #ARGV do
  local flag, ttl, d, s, o = string.match(ARGV[p], '^([01]) (%d+) (%d+) (%d+) (%d+)$')
  d, s, o = tonumber(d), tonumber(s), tonumber(o)
  local bucket = KEYS[k]
  local overflow = nil
  if flag == '1' then overflow = KEYS[k + 1] end
  k = k + (overflow and 2 or 1)
  local dels = p + 1
  local sets = dels + d
  local overs = sets + 2 * s
  p = overs + 2 * o
  groups = groups + 1

  if d > 0 then call_range('HDEL', bucket, ARGV, dels, sets - 1) end
  if s > 0 then call_range('HSET', bucket, ARGV, sets, overs - 1) end
  if overflow and (d > 0 or s > 0) and redis.call('EXISTS', overflow) == 1 then
    local names = {}
    for i = dels, sets - 1 do names[#names + 1] = ARGV[i] end
    for i = sets, overs - 1, 2 do names[#names + 1] = ARGV[i] end
    call_range('HDEL', overflow, names, 1, #names)
  end
  if overflow and o > 0 then
    local markers = {}
    for i = overs, p - 1, 2 do
      markers[#markers + 1] = ARGV[i]
      markers[#markers + 1] = ''
    end
    call_range('HSET', bucket, markers, 1, #markers)
    call_range('HSET', overflow, ARGV, overs, p - 1)
    redis.call('EXPIRE', overflow, ttl)
  end
  if s > 0 or o > 0 then redis.call('EXPIRE', bucket, ttl) end
end
return groups
