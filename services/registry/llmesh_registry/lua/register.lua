-- KEYS: worker hash, lease zset, revision counter, event stream
-- ARGV: worker_id, static, models, state, reason, load, lease_id, ttl_ms, evict_ms, maxlen
local wkey, leases, rev_key, stream = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local ttl, evict = tonumber(ARGV[8]), tonumber(ARGV[9])
local now = now_ms()
local exp = now + ttl
local prev = redis.call('HMGET', wkey, 'reg', 'pin', 'reason')
local reg = prev[1] or tostring(now)
-- An admin's pin (a drain) outlives a re-registration of the same worker id.
local pin, state, reason = prev[2] or '0', ARGV[4], ARGV[5]
if pin ~= '0' then state, reason = pin, prev[3] or '' end
redis.call('DEL', wkey)
redis.call('HSET', wkey, 'static', ARGV[2], 'models', ARGV[3], 'state', state,
  'reason', reason, 'load', ARGV[6], 'lease', ARGV[7], 'reg', reg, 'hb', now,
  'exp', exp, 'pin', pin)
redis.call('PEXPIRE', wkey, ttl + evict + 1000)
redis.call('ZADD', leases, exp, ARGV[1])
local rev = emit(rev_key, stream, ARGV[10], 1, ARGV[1], redis.call('HGETALL', wkey))
return {rev, exp}
