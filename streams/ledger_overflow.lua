-- Values too long for a bucket hash's listpack (longer than hash-max-listpack-value, the
-- ledger's LIMIT) live in the bucket's overflow hash, and the bucket keeps a marker under the
-- field. Layout 4 cuts such a value into pieces of at most LIMIT bytes, so that the overflow
-- hash stays a listpack too (an entry of Redis's hash-table encoding costs ~150 bytes beside
-- its value), and the marker is one byte: the number of pieces, 2 to PIECES_MAX. The first
-- piece is under the field itself, piece k under byte 255, byte k and the field (no field
-- starts with byte 255: streams/codec.py, streams/redis_ledger.py). Layout 3 and before wrote
-- the whole value under the field, with an empty marker; that is still read, and written for
-- a value of more than PIECES_MAX pieces and for the person buckets (streams/redis_ledger.py:
-- their overflow hashes hold too many values for a listpack anyway). No value the ledger
-- stores is one byte long.
-- RedisLedger puts this file first in the load, store and sweep scripts.

local PIECES_MAX = 255

-- true when a bucket's value is a marker ('' or a count of pieces)
local function is_marker(value)
  if #value > 1 then return false end
  return value == '' or string.byte(value) >= 2
end

-- the overflow hash's names of the value behind a marker
local function piece_names(name, marker)
  local names = {name}
  if marker ~= '' then
    for k = 2, string.byte(marker) do names[k] = '\255' .. string.char(k) .. name end
  end
  return names
end

-- the value behind a marker (false when it, or a piece of it, is missing)
local function overflow_value(big, name, marker)
  if marker == '' then return redis.call('HGET', big, name) end
  local parts = redis.call('HMGET', big, unpack(piece_names(name, marker)))
  for k = 1, #parts do
    if not parts[k] then return false end
  end
  return table.concat(parts)
end

-- the marker and the overflow hash's names and pieces (flat) of a long value; whole (in one
-- piece, under an empty marker) when asked or when it has more than PIECES_MAX pieces
local function pieces_of(name, value, limit, whole)
  local count = math.ceil(#value / limit)
  if whole or count > PIECES_MAX then return '', {name, value} end
  local flat = {name, string.sub(value, 1, limit)}
  for k = 2, count do
    flat[#flat + 1] = '\255' .. string.char(k) .. name
    flat[#flat + 1] = string.sub(value, (k - 1) * limit + 1, k * limit)
  end
  return string.char(count), flat
end

-- Digest runs (the router memory since layout 6) have an overflow of their own: a run that
-- grows past RUN_LIMIT bytes (4,096 digests, where searching it costs about what a hash
-- table's lookup does, and copying it into Lua more) moves its digests to the bucket's spill
-- hash (the run's key and ':h', digest → '') and keeps one sentinel byte, then the digests
-- appended since. So a spilled run's length is one more than a multiple of 8, and its digests
-- start at offsets 2, 10, 18, ... A bucket's markers are those of its run and its spill hash.
local RUN_LIMIT = 32768
local RUN_SPILLED = '\0'

local function spill_of(key) return key .. ':h' end

-- true when the run's digests start after a sentinel (its markers spilled before)
local function has_spilled(run) return #run % 8 == 1 end

-- where the whole digest starts in the run (from 1), or nil
local function run_find(run, digest)
  local skip = #run % 8
  local at = string.find(run, digest, 1, true)
  while at and (at - 1 - skip) % 8 ~= 0 do at = string.find(run, digest, at + 1, true) end
  return at
end
