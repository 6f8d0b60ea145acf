-- Registry::allocate. ARGV[3]: the AllocationRequest JSON; [4]: lease ttl ms; [5]: the
-- world id (the request's, or a fresh one); [6]: a fresh lease id; [7]: the player id.
-- Answers the Placement JSON.
local req = cjson.decode(ARGV[3])
local ttl, world, lease_id, player = tonumber(ARGV[4]), ARGV[5], ARGV[6], ARGV[7]

if redis.call('EXISTS', K.known) == 0 then return fail('fleet_not_found', req.fleet) end
for i, region in ipairs(req.regions) do
  if redis.call('SISMEMBER', K.regions, region) == 0 then return fail('unknown_region', req.fleet, tostring(i - 1), region) end
end

local key = opt(req.idempotencyKey)
if key then
  local answer = redis.call('HGET', idem(key), 'answer')
  if answer then return reply(answer) end
end

-- Joining a world that a live server holds: tell where it is; no new slot.
if opt(req.worldId) then
  local holder = redis.call('HGET', K.worlds, world)
  local rec = holder and load(holder)
  if rec then
    if rec.state == 'Draining' then
      return fail('no_capacity', 'world ' .. q(world) .. ' is on a draining server')
    end
    return reply(placement(world, player, cjson.encode(rec), lease_of(world), epoch_of(world)))
  end
end

local rec = choose(req, nil)
if not rec then
  local regions = #req.regions == 0 and 'any region' or table.concat(req.regions, ', ')
  return fail('no_capacity', 'no game server of fleet ' .. q(req.fleet) .. ' in ' .. regions .. ' has a free world slot')
end
local lease, epoch = place(world, rec, ttl, lease_id)
for k, v in pairs(req.metadata.labels) do rec.labels[k] = v end
for k, v in pairs(req.metadata.annotations) do rec.annotations[k] = v end
local answer = placement(world, player, save(rec), lease, epoch)
if key then
  redis.call('HSET', idem(key), 'answer', answer, 'world', world)
  redis.call('PEXPIRE', idem(key), ttl)
  redis.call('HSET', K.idem_of, world, key)
end
return reply(answer)
