-- KEYS: worker hash, lease zset, revision counter, event stream
-- ARGV: worker_id, lease_id, ttl_ms, evict_ms, maxlen, load ('' keeps),
--       state ('0' keeps), reason, models ('' keeps)
-- Returns {revision, state} or {-1} (unknown) / {-2} (stale lease).
local wkey, leases, rev_key, stream = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local cur = redis.call('HMGET', wkey, 'lease', 'load', 'state', 'reason', 'models', 'pin')
if not cur[1] then return {-1} end
if cur[1] ~= ARGV[2] then return {-2} end
local ttl, evict = tonumber(ARGV[3]), tonumber(ARGV[4])
local changed = false
local state = cur[3]
if ARGV[6] ~= '' and ARGV[6] ~= cur[2] then
  redis.call('HSET', wkey, 'load', ARGV[6])
  changed = true
end
if cur[6] ~= '0' then
  if state ~= cur[6] then
    state = cur[6]
    redis.call('HSET', wkey, 'state', state)
    changed = true
  end
elseif ARGV[7] ~= '0' and (ARGV[7] ~= state or ARGV[8] ~= cur[4]) then
  state = ARGV[7]
  redis.call('HSET', wkey, 'state', state, 'reason', ARGV[8])
  changed = true
end
if ARGV[9] ~= '' and ARGV[9] ~= cur[5] then
  redis.call('HSET', wkey, 'models', ARGV[9])
  changed = true
end
local now = now_ms()
local exp = now + ttl
redis.call('HSET', wkey, 'hb', now, 'exp', exp)
redis.call('PEXPIRE', wkey, ttl + evict + 1000)
redis.call('ZADD', leases, exp, ARGV[1])
local rev
if changed then
  rev = emit(rev_key, stream, ARGV[5], 1, ARGV[1], redis.call('HGETALL', wkey))
else
  rev = current_rev(rev_key)
end
return {rev, tonumber(state)}
