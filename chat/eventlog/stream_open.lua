-- Register one open event stream of a user unless they already have the limit.
-- KEYS: the user's open streams (a sorted set, score = expiry ms). ARGV: 1 token, 2 limit (0: none), 3 ttl_ms
-- Returns 1 when registered, 0 over the limit.
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now_ms)
local limit = tonumber(ARGV[2])
if limit > 0 and redis.call('ZCARD', KEYS[1]) >= limit then return 0 end
redis.call('ZADD', KEYS[1], now_ms + tonumber(ARGV[3]), ARGV[1])
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[3]))
return 1
