-- KEYS: worker hash, lease zset, revision counter, event stream
-- ARGV: worker_id, state, reason, maxlen, ready_state
-- Returns {revision, fields} or {-1} (unknown).
local wkey, rev_key, stream = KEYS[1], KEYS[3], KEYS[4]
local cur = redis.call('HMGET', wkey, 'state', 'reason')
if not cur[1] then return {-1} end
local pin = ARGV[2]
if ARGV[2] == ARGV[5] then pin = '0' end
redis.call('HSET', wkey, 'pin', pin)
local rev
if cur[1] ~= ARGV[2] or cur[2] ~= ARGV[3] then
  redis.call('HSET', wkey, 'state', ARGV[2], 'reason', ARGV[3])
  rev = emit(rev_key, stream, ARGV[4], 1, ARGV[1], redis.call('HGETALL', wkey))
else
  rev = current_rev(rev_key)
end
return {rev, redis.call('HGETALL', wkey)}
