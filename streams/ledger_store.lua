-- tracewatch ledger: write the fields of many bucket hashes in one call (one round trip).
--
-- ARGV[1]: "LIMIT" and, per run of bucket hashes, " N F TTL": N hashes, F 1 when they have
-- overflow hashes (else 0), TTL their expiry in seconds.
-- KEYS: per run, its N bucket hashes, then, when F is 1, their N overflow hashes in the same
-- order.
-- ARGV[2]: per write, 4 bytes little-endian: 2 * (number of its bucket hash, from 0, counting
-- the bucket hashes of all runs) + 1 for a set, + 0 for a delete.
-- ARGV[3], ...: per write, its field and its value (empty for a delete).
-- A value longer than LIMIT in a bucket with an overflow hash goes there, and the bucket gets
-- an empty marker under the field. Per bucket, deletes run before sets; a field set in the
-- bucket or deleted loses its overflow copy. Every written key gets its expiry pushed to TTL
-- (a bucket that only had deletes keeps its own). Returns the number of bucket hashes.

local STEP = 4000 -- even, and well below Lua's unpack() limit

local function call_range(command, key, list, first, last)
  for s = first, last, STEP do
    redis.call(command, key, unpack(list, s, math.min(s + STEP - 1, last)))
  end
end

local limit, runs = string.match(ARGV[1], '^(%d+)(.*)$')
limit = tonumber(limit)
local bucket, over, ttl = {}, {}, {}
local n, k = 0, 0
for count, flag, seconds in string.gmatch(runs, ' (%d+) ([01]) (%d+)') do
  count = tonumber(count)
  for j = 1, count do
    bucket[n + j] = KEYS[k + j]
    if flag == '1' then over[n + j] = KEYS[k + count + j] end
    ttl[n + j] = seconds
  end
  n = n + count
  k = k + (flag == '1' and 2 or 1) * count
end

local dels, sets, overs = {}, {}, {}
local index = ARGV[2]
local byte = string.byte
local a = 3
for p = 1, #index, 4 do
  local b1, b2, b3, b4 = byte(index, p, p + 3)
  local e = b1 + 256 * (b2 + 256 * (b3 + 256 * b4))
  local set = e % 2
  local b = (e - set) / 2 + 1
  local name, value = ARGV[a], ARGV[a + 1]
  a = a + 2
  local into
  if set == 0 then
    into = dels
  elseif over[b] and #value > limit then
    into = overs
  else
    into = sets
  end
  local list = into[b]
  if not list then
    list = {}
    into[b] = list
  end
  list[#list + 1] = name
  if set == 1 then list[#list + 1] = value end
end

for b = 1, n do
  local d, s, o = dels[b], sets[b], overs[b]
  local key, big = bucket[b], over[b]
  if d then call_range('HDEL', key, d, 1, #d) end
  if s then call_range('HSET', key, s, 1, #s) end
  if big and (d or s) and redis.call('EXISTS', big) == 1 then
    local names = {}
    if d then for i = 1, #d do names[#names + 1] = d[i] end end
    if s then for i = 1, #s, 2 do names[#names + 1] = s[i] end end
    call_range('HDEL', big, names, 1, #names)
  end
  if o then
    local markers = {}
    for i = 1, #o, 2 do
      markers[#markers + 1] = o[i]
      markers[#markers + 1] = ''
    end
    call_range('HSET', key, markers, 1, #markers)
    call_range('HSET', big, o, 1, #o)
    redis.call('EXPIRE', big, ttl[b])
  end
  if s or o then redis.call('EXPIRE', key, ttl[b]) end
end
return n
