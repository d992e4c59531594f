-- KEYS: lease zset, revision counter, event stream
-- ARGV: worker key prefix, evict_ms, maxlen, limit, unhealthy_state, reason
-- Marks lapsed leases UNHEALTHY and evicts long-lapsed workers. Safe to run
-- from every replica at once (each step is idempotent). Returns the changes.
local leases, rev_key, stream = KEYS[1], KEYS[2], KEYS[3]
local evict = tonumber(ARGV[2])
local now = now_ms()
local changes = 0
local due = redis.call('ZRANGEBYSCORE', leases, '-inf', now, 'LIMIT', 0, tonumber(ARGV[4]))
for _, id in ipairs(due) do
  local wkey = ARGV[1] .. id
  local cur = redis.call('HMGET', wkey, 'exp', 'state')
  if not cur[1] then
    -- Redis expired the record already: report the removal once.
    redis.call('ZREM', leases, id)
    emit(rev_key, stream, ARGV[3], 2, id, {})
    changes = changes + 1
  elseif now >= tonumber(cur[1]) + evict then
    local fields = redis.call('HGETALL', wkey)
    redis.call('DEL', wkey)
    redis.call('ZREM', leases, id)
    emit(rev_key, stream, ARGV[3], 2, id, fields)
    changes = changes + 1
  else
    if cur[2] ~= ARGV[5] then
      redis.call('HSET', wkey, 'state', ARGV[5], 'reason', ARGV[6])
      emit(rev_key, stream, ARGV[3], 1, id, redis.call('HGETALL', wkey))
      changes = changes + 1
    end
    -- Next look at this worker: when it is due for eviction.
    redis.call('ZADD', leases, tonumber(cur[1]) + evict, id)
  end
end
return changes
