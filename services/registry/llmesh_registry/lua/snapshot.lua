-- KEYS: lease zset, revision counter
-- ARGV: worker key prefix
-- Returns {revision, {id, fields}, ...}: every worker at one revision.
local out = {current_rev(KEYS[2])}
for _, id in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  local fields = redis.call('HGETALL', ARGV[1] .. id)
  if #fields > 0 then
    table.insert(out, {id, fields})
  end
end
return out
