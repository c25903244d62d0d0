-- tracewatch ledger: write the fields of many bucket hashes in one call (one round trip).
--
-- ARGV[1]: "LIMIT" and, per run of bucket hashes, " N F TTL": N hashes, F 2 when they have
-- overflow hashes that take long values in pieces, 1 when whole, 0 without overflow hashes,
-- 3 when they are digest runs (strings of 8-byte digests end to end) instead of hashes, TTL
-- their expiry in seconds.
-- KEYS: per run, its N bucket hashes, then, when F is 1 or 2, their N overflow hashes in the
-- same order.
-- ARGV[2]: per write, 4 bytes little-endian: 8 * (number of its bucket hash, from 0, counting
-- the bucket hashes of all runs) + 4 when the field may have a copy in the overflow hash
-- + 2 when the bucket's expiry is to be pushed + 1 for a set (0 for a delete).
-- ARGV[3], ...: per write, its field and its value (empty for a delete).
-- A value longer than LIMIT in a bucket with an overflow hash goes there (in pieces or whole),
-- and the bucket gets a marker under the field (ledger_overflow.lua, which comes before this
-- file). Per bucket, deletes run before sets; a field set or deleted loses what the overflow
-- hash held of its value (looked for, by its marker, only when the write says there may be
-- some). A bucket gets its expiry pushed to TTL when a write of it asks (the
-- caller asks once a day per bucket, not on every write: each EXPIRE is a call of its own);
-- an overflow hash written to always does. A digest run takes no field: a set's value is
-- digests to append, a delete's digests to remove (each copy, from the run and its spill
-- hash), before the sets. Returns the number of bucket hashes.

local STEP = 4000 -- even, and well below Lua's unpack() limit

local function call_range(command, key, list, first, last)
  for s = first, last, STEP do
    redis.call(command, key, unpack(list, s, math.min(s + STEP - 1, last)))
  end
end

local limit, runs = string.match(ARGV[1], '^(%d+)(.*)$')
limit = tonumber(limit)

-- The writes of each bucket, in order, without a table per bucket: a counting sort of the
-- write numbers by bucket.
local index = ARGV[2]
local byte = string.byte
local entry, count = {}, {}
local writes = #index / 4
for i = 1, writes do
  local p = 4 * i - 3
  local b1, b2, b3, b4 = byte(index, p, p + 3)
  local e = b1 + 256 * (b2 + 256 * (b3 + 256 * b4))
  entry[i] = e
  local b = (e - e % 8) / 8 + 1
  count[b] = (count[b] or 0) + 1
end
local buckets = 0
for n in string.gmatch(runs, ' (%d+) [0123] %d+') do buckets = buckets + tonumber(n) end
local start, next_at, order = {}, {}, {}
local at = 1
for b = 1, buckets do
  start[b] = at
  next_at[b] = at
  at = at + (count[b] or 0)
end
for i = 1, writes do
  local e = entry[i]
  local b = (e - e % 8) / 8 + 1
  order[next_at[b]] = i
  next_at[b] = next_at[b] + 1
end

-- The overflow names of the values under names (those of them the writes say may have a
-- copy there) as the bucket's markers say, read before the bucket is written.
local function stale_pieces(key, names)
  local stale = {}
  for first = 1, #names, STEP do
    local olds = redis.call('HMGET', key, unpack(names, first, math.min(first + STEP - 1, #names)))
    for j = 1, #olds do
      local old = olds[j]
      if old and is_marker(old) then
        for _, name in ipairs(piece_names(names[first + j - 1], old)) do
          stale[#stale + 1] = name
        end
      end
    end
  end
  return stale
end

local function write(key, big, whole, ttl, first, last)
  if first == last then -- the common case: one write to the bucket
    local i = order[first]
    local e = entry[i]
    local name, value = ARGV[2 * i + 1], ARGV[2 * i + 2]
    if big and e % 8 >= 4 then
      local stale = stale_pieces(key, {name})
      if #stale > 0 then redis.call('HDEL', big, unpack(stale)) end
    end
    if e % 2 == 0 then
      redis.call('HDEL', key, name)
    elseif big and #value > limit then
      local marker, flat = pieces_of(name, value, limit, whole)
      redis.call('HSET', key, name, marker)
      redis.call('HSET', big, unpack(flat))
      redis.call('EXPIRE', big, ttl)
      if e % 4 >= 2 then redis.call('EXPIRE', key, ttl) end
    else
      redis.call('HSET', key, name, value)
      if e % 4 >= 2 then redis.call('EXPIRE', key, ttl) end
    end
    return
  end
  local d, s, o, m, copied = {}, {}, {}, {}, {}
  local refresh = false
  for j = first, last do
    local i = order[j]
    local e = entry[i]
    local name, value = ARGV[2 * i + 1], ARGV[2 * i + 2]
    if big and e % 8 >= 4 then copied[#copied + 1] = name end
    if e % 4 >= 2 then refresh = true end
    if e % 2 == 0 then
      d[#d + 1] = name
    elseif big and #value > limit then
      local marker, flat = pieces_of(name, value, limit, whole)
      m[#m + 1] = name
      m[#m + 1] = marker
      for p = 1, #flat do o[#o + 1] = flat[p] end
    else
      s[#s + 1] = name
      s[#s + 1] = value
    end
  end
  if #copied > 0 then
    local stale = stale_pieces(key, copied)
    if #stale > 0 then call_range('HDEL', big, stale, 1, #stale) end
  end
  if #d > 0 then call_range('HDEL', key, d, 1, #d) end
  if #s > 0 then call_range('HSET', key, s, 1, #s) end
  if #o > 0 then
    call_range('HSET', key, m, 1, #m)
    call_range('HSET', big, o, 1, #o)
    redis.call('EXPIRE', big, ttl)
  end
  if refresh and (#s > 0 or #o > 0) then redis.call('EXPIRE', key, ttl) end
end

-- Digest runs: removals, then one APPEND of the added digests; a run grown past RUN_LIMIT
-- spills them to its spill hash (ledger_overflow.lua).
local sub = string.sub
local function write_run(key, ttl, first, last)
  local removed, added = {}, {}
  local refresh = false
  for j = first, last do
    local i = order[j]
    local e = entry[i]
    if e % 2 == 0 then
      removed[#removed + 1] = ARGV[2 * i + 2]
    else
      added[#added + 1] = ARGV[2 * i + 2]
      if e % 4 >= 2 then refresh = true end
    end
  end
  if #removed > 0 then
    local run = redis.call('GET', key)
    if run then
      local kept = run
      local digests = table.concat(removed)
      local gone = {}
      for d = 1, #digests, 8 do
        local digest = sub(digests, d, d + 7)
        gone[#gone + 1] = digest
        local at = run_find(kept, digest)
        while at do
          kept = sub(kept, 1, at - 1) .. sub(kept, at + 8)
          at = run_find(kept, digest)
        end
      end
      if has_spilled(run) then call_range('HDEL', spill_of(key), gone, 1, #gone) end
      if kept == '' then
        redis.call('DEL', key)
      elseif #kept < #run then
        redis.call('SET', key, kept, 'KEEPTTL')
      end
    end
  end
  if #added > 0 then
    local joined = table.concat(added)
    local length = redis.call('APPEND', key, joined)
    -- A run just created has no expiry yet, whatever the writer's daily push assumed.
    if length == #joined or refresh then redis.call('EXPIRE', key, ttl) end
    if length > RUN_LIMIT then
      local run = redis.call('GET', key)
      local fields = {}
      for d = #run % 8 + 1, #run, 8 do
        fields[#fields + 1] = sub(run, d, d + 7)
        fields[#fields + 1] = ''
      end
      local spill = spill_of(key)
      call_range('HSET', spill, fields, 1, #fields)
      redis.call('SET', key, RUN_SPILLED, 'KEEPTTL')
      redis.call('EXPIRE', spill, ttl)
    end
  end
end

local b, k = 0, 0
for n, flag, ttl in string.gmatch(runs, ' (%d+) ([0123]) (%d+)') do
  n = tonumber(n)
  local big = flag == '1' or flag == '2'
  for j = 1, n do
    local c = count[b + j]
    if c then
      local first = start[b + j]
      if flag == '3' then
        write_run(KEYS[k + j], ttl, first, first + c - 1)
      else
        write(KEYS[k + j], big and KEYS[k + n + j] or nil, flag == '1', ttl, first, first + c - 1)
      end
    end
  end
  b = b + n
  k = k + (big and 2 or 1) * n
end
return buckets
