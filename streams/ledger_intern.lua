-- tracewatch ledger: ids of interned strings, allocating new ones (atomic, so race-free
-- between writers).
--
-- KEYS[1]: the table's text -> id hash; KEYS[2]: its id -> text hash, whose field "0"
-- counts the ids given out (ids start at 1).
-- ARGV: the texts. Returns their ids, in order.

local ids = {}
for i, text in ipairs(ARGV) do
  local id = redis.call('HGET', KEYS[1], text)
  if not id then
    id = redis.call('HINCRBY', KEYS[2], '0', 1)
    redis.call('HSET', KEYS[1], text, id)
    redis.call('HSET', KEYS[2], id, text)
  end
  ids[i] = tonumber(id)
end
return ids
