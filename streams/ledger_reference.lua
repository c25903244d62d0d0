-- Following a code's entry that refers to a shared state. RedisLedger puts this file before
-- ledger_load.lua and ledger_sweep.lua, which both follow references, after
-- ledger_overflow.lua.
-- A value of 2 to 12 bytes starting with '-' is a reference: the rest is the serial in
-- decimal (Redis keeps such a value as an integer); so is one of 2 to 6 bytes starting with
-- byte 0x10, the rest the serial big-endian (serials past 2**31, and layout 2's). No packed
-- state starts with 0x10, nor one that short with '-' (streams/codec.py, SHARED_REF and
-- SHARED_DECIMAL_SIZE).
-- shared_slot returns the shared bucket's number (the serial without its low byte) and the
-- field (that low byte), or nil for another value.
local function shared_slot(value)
  local size = #value
  if size < 2 or size > 12 then return nil end
  local first = string.byte(value, 1)
  if first == 45 then
    local serial = tonumber(string.sub(value, 2))
    return math.floor(serial / 256), serial % 256
  end
  if first ~= 16 or size > 6 then return nil end
  local high = 0
  for p = 2, size - 1 do high = high * 256 + string.byte(value, p) end
  return high, string.byte(value, size)
end

-- The shared state at (high, low) under the shared buckets' key prefix: false when it has
-- expired. A marker, as in the code buckets (is_marker, ledger_overflow.lua), says the state
-- lives in the shared bucket's overflow hash, whose key has ':vx:' for the prefix's last ':v:'.
local function shared_state(shared, high, low)
  local state = redis.call('HGET', shared .. high, low)
  if state and is_marker(state) then
    state = overflow_value(string.sub(shared, 1, -3) .. 'vx:' .. high, tostring(low), state)
  end
  return state
end

