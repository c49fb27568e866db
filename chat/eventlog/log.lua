-- Shared by every script that appends (prepended to it): one event into a log, published live.
-- A log is a Redis Stream (its entries' ids are the SSE ids) and its tail key; each entry records the id
-- before it ('p'), so a reader can tell a complete sequence from one with a hole.
-- The live copy: origin, id, prev, type, message id, final, then the data (which may hold anything).
local function log_append(stream, tail, event_type, data, retention_ms, ttl, message_id, final, channel, origin)
  local t = redis.call('TIME')
  local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  local prev = redis.call('GET', tail) or '0-0'
  local fields = {'t', event_type, 'd', data, 'p', prev}
  if message_id ~= '' then
    table.insert(fields, 'm')
    table.insert(fields, message_id)
  end
  if final == '1' then
    table.insert(fields, 'f')
    table.insert(fields, '1')
  end
  local id = redis.call('XADD', stream, 'MINID', '~', tostring(now_ms - retention_ms), '*', unpack(fields))
  redis.call('SET', tail, id, 'PX', ttl)
  redis.call('PEXPIRE', stream, ttl)
  redis.call('PUBLISH', channel,
             origin .. '\n' .. id .. '\n' .. prev .. '\n' .. event_type .. '\n' .. message_id .. '\n' .. final
             .. '\n' .. data)
  return id, prev
end
