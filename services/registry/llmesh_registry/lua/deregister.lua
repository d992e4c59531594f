-- KEYS: worker hash, lease zset, revision counter, event stream
-- ARGV: worker_id, lease_id ('' for any), maxlen
-- Returns {revision} or {-1} (unknown) / {-2} (stale lease).
local wkey, leases, rev_key, stream = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local lease = redis.call('HGET', wkey, 'lease')
if not lease then return {-1} end
if ARGV[2] ~= '' and ARGV[2] ~= lease then return {-2} end
local fields = redis.call('HGETALL', wkey)
redis.call('DEL', wkey)
redis.call('ZREM', leases, ARGV[1])
return {emit(rev_key, stream, ARGV[3], 2, ARGV[1], fields)}
