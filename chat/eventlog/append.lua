-- Append one event to a log (log.lua), update its streaming message's state.
-- KEYS: stream, tail, streaming set, state hash, content, reasoning
-- ARGV: 1 type, 2 data, 3 retention_ms, 4 key_ttl_ms, 5 op, 6 change's message id, 7 seq, 8 content,
--       9 reasoning, 10 message JSON, 11 event's message id ('' none), 12 final ('1' or ''),
--       13 live channel, 14 publisher's origin
-- Returns {id, prev, lost}: lost = 1 when a delta found no state for its message.
local ttl = tonumber(ARGV[4])
local id, prev = log_append(KEYS[1], KEYS[2], ARGV[1], ARGV[2], tonumber(ARGV[3]), ttl, ARGV[11], ARGV[12],
                            ARGV[13], ARGV[14])
local op = ARGV[5]
local lost = 0
if op == 'start' or op == 'seed' then
  if ARGV[10] ~= '' then redis.call('HSET', KEYS[4], 'message', ARGV[10]) end
  redis.call('HSET', KEYS[4], 'seq', ARGV[7])
  redis.call('SET', KEYS[5], ARGV[8], 'PX', ttl)
  redis.call('SET', KEYS[6], ARGV[9], 'PX', ttl)
  redis.call('PEXPIRE', KEYS[4], ttl)
  redis.call('SADD', KEYS[3], ARGV[6])
  redis.call('PEXPIRE', KEYS[3], ttl)
elseif op == 'delta' then
  if redis.call('EXISTS', KEYS[4]) == 0 then
    lost = 1
  else
    redis.call('HSET', KEYS[4], 'seq', ARGV[7])
    if ARGV[8] ~= '' then redis.call('APPEND', KEYS[5], ARGV[8]) end
    if ARGV[9] ~= '' then redis.call('APPEND', KEYS[6], ARGV[9]) end
  end
elseif op == 'end' then
  redis.call('DEL', KEYS[4], KEYS[5], KEYS[6])
  redis.call('SREM', KEYS[3], ARGV[6])
end
return {id, prev, lost}
