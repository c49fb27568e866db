-- Who views a conversation: a sorted set, member = a stream's 32-character token + username, score = expiry ms.
-- KEYS: 1 the set, 2 the viewers last announced (usernames joined by newlines), 3 log stream, 4 log tail
-- ARGV: 1 op, 2 ttl_ms (of an entry), 3 key_ttl_ms, 4 retention_ms, 5 live channel, 6 origin, 7 event type,
--       8... members
-- op 'enter': add the members; returns the viewers (sorted usernames, each once).
-- op 'announce': refresh the members still open here, drop the expired ones (a crashed process's), and if the
-- viewers differ from the last announced, append the presence event to the log (log.lua) and remember them:
-- one atomic step, so two processes never announce out of order. Returns {id, prev, data}, or {} if unchanged.
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[2])
local key_ttl = tonumber(ARGV[3])
local op = ARGV[1]
for i = 8, #ARGV do
  if op == 'enter' then
    redis.call('ZADD', KEYS[1], now_ms + ttl, ARGV[i])
  else
    redis.call('ZADD', KEYS[1], 'XX', now_ms + ttl, ARGV[i])
  end
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now_ms)
redis.call('PEXPIRE', KEYS[1], key_ttl)
local names, seen = {}, {}
for _, member in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  local name = string.sub(member, 33)
  if not seen[name] then
    seen[name] = true
    table.insert(names, name)
  end
end
table.sort(names)
if op == 'enter' then return names end
local joined = table.concat(names, '\n')
local last = redis.call('GET', KEYS[2])
if (last or '') == joined then
  if last then redis.call('PEXPIRE', KEYS[2], key_ttl) end
  return {}
end
redis.call('SET', KEYS[2], joined, 'PX', key_ttl)
local quoted = {}
for i, name in ipairs(names) do quoted[i] = cjson.encode(name) end
local data = '{"viewers":[' .. table.concat(quoted, ',') .. ']}'
local id, prev = log_append(KEYS[3], KEYS[4], ARGV[7], data, tonumber(ARGV[4]), key_ttl, '', '', ARGV[5], ARGV[6])
return {id, prev, data}
