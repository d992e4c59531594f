-- KEYS: worker hash, lease zset, revision counter, event stream
-- ARGV: worker_id, static, models, state, reason, load, lease_id, ttl_ms, evict_ms, maxlen
local wkey, leases, rev_key, stream = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local ttl, evict = tonumber(ARGV[8]), tonumber(ARGV[9])
local now = now_ms()
local exp = now + ttl
local reg = redis.call('HGET', wkey, 'reg') or tostring(now)
redis.call('DEL', wkey)
redis.call('HSET', wkey, 'static', ARGV[2], 'models', ARGV[3], 'state', ARGV[4],
  'reason', ARGV[5], 'load', ARGV[6], 'lease', ARGV[7], 'reg', reg, 'hb', now,
  'exp', exp, 'pin', '0')
redis.call('PEXPIRE', wkey, ttl + evict + 1000)
redis.call('ZADD', leases, exp, ARGV[1])
local rev = emit(rev_key, stream, ARGV[10], 1, ARGV[1], redis.call('HGETALL', wkey))
return {rev, exp}
