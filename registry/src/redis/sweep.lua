-- Registry::sweep over one fleet. ARGV[3]: tombstone ttl ms; [4]: epoch retention ms;
-- [5]: most entries handled per phase. Answers the expired worlds, the servers marked
-- Unhealthy and those removed (JSON lists), and '1' when a phase had more due than it
-- handled (the caller runs the script again), else '0'.
local tombstone_ttl, retention, limit = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local more = false

-- Members of `key` scored at or below `upto`, at most `limit` of them per call, so a
-- burst of expiries never blocks Redis for long.
local function due(key, upto)
  local members = redis.call('ZRANGEBYSCORE', key, '-inf', upto, 'LIMIT', 0, limit)
  if #members == limit then more = true end
  return members
end

local expired = due(K.lease_expiry, NOW)
for _, world in ipairs(expired) do
  local rec = load(redis.call('HGET', K.worlds, world))
  forget_world(world, rec.name)
  release_slot(rec)
  save(rec)
end

-- Epochs of worlds placed nowhere, last assigned a retention ago and below the clock,
-- are forgotten: the next bump_epoch starts at the clock, above them. A world still
-- placed (or with an epoch ahead of the clock) keeps its epoch and is looked at again a
-- retention later, so that long-lived worlds are not rescanned on every sweep.
for _, world in ipairs(due(K.epoch_at, NOW - retention)) do
  if redis.call('HEXISTS', K.worlds, world) == 1 or epoch_of(world) >= NOW then
    redis.call('ZADD', K.epoch_at, NOW, world)
  else
    redis.call('HDEL', K.epochs, world)
    redis.call('ZREM', K.epoch_at, world)
  end
end

local unhealthy = {}
for _, name in ipairs(due(K.health, NOW)) do
  -- Only live servers are in the health set, and every live state may fail.
  transition(load(name), 'Unhealthy')
  unhealthy[#unhealthy + 1] = name
end

local removed = {}
for _, name in ipairs(due(K.tombstones, NOW - tombstone_ttl)) do
  forget_server(load(name))
  removed[#removed + 1] = name
end

return reply(list_json(expired), list_json(unhealthy), list_json(removed), more and '1' or '0')
