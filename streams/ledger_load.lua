-- tracewatch ledger: read the fields of many bucket hashes in one call (one round trip).
--
-- KEYS: per group, the bucket hash and, when the group has one, its overflow hash.
-- ARGV: per group: a header "F N" (F: 1 when the group has an overflow hash, else 0; N: the
-- number of fields), then the N fields.
-- Returns the values of all fields, group after group, in order (nil when absent).
-- In a group with an overflow hash, an empty value in the bucket is a marker: the value was
-- too long for the bucket's compact (listpack) encoding and lives in the overflow hash.

local STEP = 4000 -- stay well below Lua's unpack() limit
local out = {}
local k, p = 1, 1
while p <= #ARGV do
  local flag, count = string.match(ARGV[p], '^([01]) (%d+)$')
  local n = tonumber(count)
  local bucket = KEYS[k]
  local overflow = nil
  if flag == '1' then overflow = KEYS[k + 1] end
  k = k + (overflow and 2 or 1)
  p = p + 1
  local first = #out
  for s = 0, n - 1, STEP do
    local last = math.min(s + STEP, n) - 1
    local values = redis.call('HMGET', bucket, unpack(ARGV, p + s, p + last))
    for i = 1, #values do out[first + s + i] = values[i] end
  end
  if overflow then
    local where, names = {}, {}
    for i = 1, n do
      if out[first + i] == '' then
        where[#where + 1] = first + i
        names[#names + 1] = ARGV[p + i - 1]
      end
    end
    for s = 1, #names, STEP do
      local last = math.min(s + STEP - 1, #names)
      local values = redis.call('HMGET', overflow, unpack(names, s, last))
      for i = 1, #values do out[where[s + i - 1]] = values[i] end
    end
  end
  p = p + n
end
return out
