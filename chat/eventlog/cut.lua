-- The log's tail and every streaming message's state as of that tail, read atomically.
-- KEYS: tail, streaming set. ARGV: 1 message key prefix
-- Returns {tail, then per streaming message: id, message JSON, seq, content, reasoning}.
local tail = redis.call('GET', KEYS[1]) or '0-0'
local out = {tail}
for _, mid in ipairs(redis.call('SMEMBERS', KEYS[2])) do
  local base = ARGV[1] .. mid
  local message = redis.call('HGET', base .. ':state', 'message')
  if message then
    table.insert(out, mid)
    table.insert(out, message)
    table.insert(out, redis.call('HGET', base .. ':state', 'seq') or '0')
    table.insert(out, redis.call('GET', base .. ':content') or '')
    table.insert(out, redis.call('GET', base .. ':reasoning') or '')
  end
end
return out
