-- tracewatch ledger: read the fields of many bucket hashes in one call (one round trip).
--
-- KEYS: n bucket hashes and, when ARGV[1] is '1', their n overflow hashes after them, in the
-- same order (KEYS[n + k] is the overflow hash of KEYS[k]).
-- ARGV[1]: '1' when the keys have overflow hashes, else '0'.
-- ARGV[2]: for each field, the number (from 0) of its bucket hash among the n, as 4 bytes
-- little-endian.
-- ARGV[3], ...: the fields, in that order.
-- Returns the values of the fields in the order given (nil when absent).
-- With overflow hashes, an empty value in the bucket is a marker: the value was too long for
-- the bucket's compact (listpack) encoding and lives in the overflow hash.

local STEP = 4000 -- stay well below Lua's unpack() limit
local overflow = ARGV[1] == '1'
local n = overflow and #KEYS / 2 or #KEYS
local index = ARGV[2]
local byte = string.byte

-- The fields of each bucket hash, and where each goes in the answer.
local names, where, out = {}, {}, {}
local i = 0
for p = 1, #index, 4 do
  i = i + 1
  out[i] = false
  local b1, b2, b3, b4 = byte(index, p, p + 3)
  local k = b1 + 256 * (b2 + 256 * (b3 + 256 * b4)) + 1
  local list = names[k]
  if not list then
    list = {}
    names[k] = list
    where[k] = {}
  end
  local m = #list + 1
  list[m] = ARGV[i + 2]
  where[k][m] = i
end

for k = 1, n do
  local list, at = names[k], where[k]
  if list then
    for s = 1, #list, STEP do
      local values = redis.call('HMGET', KEYS[k], unpack(list, s, math.min(s + STEP - 1, #list)))
      for j = 1, #values do out[at[s + j - 1]] = values[j] end
    end
    if overflow then
      local big, bigat = {}, {}
      for j = 1, #list do
        if out[at[j]] == '' then
          big[#big + 1] = list[j]
          bigat[#bigat + 1] = at[j]
        end
      end
      for s = 1, #big, STEP do
        local values = redis.call('HMGET', KEYS[n + k], unpack(big, s, math.min(s + STEP - 1, #big)))
        for j = 1, #values do out[bigat[s + j - 1]] = values[j] end
      end
    end
  end
end
return out
