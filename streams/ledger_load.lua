-- tracewatch ledger: read the fields of many bucket hashes in one call (one round trip).
--
-- KEYS: n bucket hashes and, when ARGV[1] is '1', their n overflow hashes after them, in the
-- same order (KEYS[n + k] is the overflow hash of KEYS[k]); when ARGV[1] is '2', n digest runs
-- instead: strings of 8-byte digests end to end.
-- ARGV[1]: '1' when the keys have overflow hashes, '2' when they are digest runs, else '0';
-- then, for code buckets, a space and the key prefix of the shared states (a serial without
-- its low byte, in decimal, ends the key).
-- ARGV[2]: for each field, the number (from 0) of its bucket hash among the n, as 4 bytes
-- little-endian.
-- ARGV[3], ...: the fields, in that order.
-- Returns the values of the fields in the order given (nil when absent); of digest runs, an
-- empty string where the bucket holds the field (an 8-byte digest) in its run, on a digest's
-- boundary, or in its spill hash, and after the fields the number of spilled runs read
-- (run_find and the spill hashes: ledger_overflow.lua).
-- With overflow hashes, a value of at most one byte in the bucket is a marker: the value was
-- too long for the bucket's compact (listpack) encoding and lives in the overflow hash
-- (is_marker and overflow_value, ledger_overflow.lua, which comes first).
-- With a shared-state prefix, a value that refers to a state kept once for several codes
-- (shared_slot and shared_state, ledger_reference.lua, which comes before this file) is
-- looked up: the state's hash is the prefix and the serial without its low byte, in decimal,
-- its field that low byte in decimal. The answer holds that state (nil when it has expired).
-- These keys are not in KEYS: the ledger is for a single Redis, not a cluster.

local STEP = 4000 -- stay well below Lua's unpack() limit
local flag, shared = string.match(ARGV[1], '^([012]) ?(.*)$')
local overflow = flag == '1'
local runs = flag == '2'
local n = overflow and #KEYS / 2 or #KEYS
local index = ARGV[2]
local byte = string.byte
local fields = #index / 4

-- The fields grouped by bucket hash with a counting sort into flat arrays: a table per
-- bucket hash (two, with where each field goes) cost more than the lookups of a bucket
-- holding one or two of the fields, the common case.
local bucket, count, out = {}, {}, {}
for i = 1, fields do
  out[i] = false -- in order, so the answer is a Lua array
  local b1, b2, b3, b4 = byte(index, 4 * i - 3, 4 * i)
  local k = b1 + 256 * (b2 + 256 * (b3 + 256 * b4)) + 1
  bucket[i] = k
  count[k] = (count[k] or 0) + 1
end
local next_at, at = {}, 1
for k = 1, n do
  next_at[k] = at
  at = at + (count[k] or 0)
end
local names, where = {}, {} -- in bucket order: the field, and its place in the answer
for i = 1, fields do
  local k = bucket[i]
  local p = next_at[k]
  names[p] = ARGV[i + 2]
  where[p] = i
  next_at[k] = p + 1
end

local spilled = 0
local first = 1
for k = 1, n do
  local c = count[k]
  if c then
    local last = first + c - 1
    if runs then
      -- One GET a run and a plain find per digest (memchr and memcmp, in C): a run of a
      -- thousand digests is searched in about 0.6 µs, where a listpack hash compares field
      -- by field.
      local run = redis.call('GET', KEYS[k]) or ''
      for p = first, last do
        if run_find(run, names[p]) then out[where[p]] = '' end
      end
      if has_spilled(run) then -- and the markers moved to the spill hash (ledger_overflow.lua)
        spilled = spilled + 1
        for s = first, last, STEP do
          local values = redis.call('HMGET', spill_of(KEYS[k]),
                                    unpack(names, s, math.min(s + STEP - 1, last)))
          for j = 1, #values do
            if values[j] then out[where[s + j - 1]] = '' end
          end
        end
      end
    else
      for s = first, last, STEP do
        local values = redis.call('HMGET', KEYS[k], unpack(names, s, math.min(s + STEP - 1, last)))
        for j = 1, #values do out[where[s + j - 1]] = values[j] end
      end
      if overflow then
        for p = first, last do
          local value = out[where[p]]
          if value and #value <= 1 and is_marker(value) then
            out[where[p]] = overflow_value(KEYS[n + k], names[p], value)
          end
        end
      end
    end
    first = last + 1
  end
end
if runs then out[fields + 1] = spilled end

if shared ~= '' then
  local found = {} -- the boxes of one sale refer to one state: look it up once
  for i = 1, fields do
    local value = out[i]
    local high, low
    if value then
      local first = byte(value, 1)
      -- a call only for values that may be references: most are states
      if first == 45 or first == 16 then high, low = shared_slot(value) end
    end
    if high then
      local state = found[value]
      if state == nil then
        state = shared_state(shared, high, low)
        found[value] = state
      end
      out[i] = state
    end
  end
end
return out
