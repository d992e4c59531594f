-- Shared helpers, prepended to every registry script.
-- Keys share one hash tag, so every script touches a single cluster slot.
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- Bump the revision and append one event (stream id = revision) with the
-- worker's fields. A missing counter starts from the clock (microseconds), so
-- a flushed Redis never reuses revisions a watcher has seen.
local function emit(rev_key, stream_key, maxlen, event_type, worker_id, fields)
  if redis.call('EXISTS', rev_key) == 0 then
    redis.call('SET', rev_key, string.format('%d', now_ms() * 1000))
  end
  local rev = redis.call('INCR', rev_key)
  redis.call('XADD', stream_key, 'MAXLEN', '~', maxlen, string.format('%d-0', rev),
    't', event_type, 'id', worker_id, unpack(fields))
  return rev
end

local function current_rev(rev_key)
  local rev = redis.call('GET', rev_key)
  if not rev then
    rev = string.format('%d', now_ms() * 1000)
    redis.call('SET', rev_key, rev)
  end
  return tonumber(rev)
end
