-- Registry::move_world. ARGV[3]: name; [4]: world; [5]: lease ttl ms; [6]: a fresh
-- lease id. Answers the Placement JSON (no player).
local name, world, ttl, lease_id = ARGV[3], ARGV[4], tonumber(ARGV[5]), ARGV[6]
local rec = load(name)
if not rec then return fail('not_found', name) end
if redis.call('HGET', K.worlds, world) ~= name then return fail('world_not_found', name, world) end
-- Same region first (players and checkpoints are near), then anywhere in the fleet.
local req = { fleet = rec.fleet, regions = { rec.region }, selectors = {}, strategy = 'Packed', priorities = {} }
local target = choose(req, name)
if not target then
  req.regions = {}
  target = choose(req, name)
end
if not target then
  return fail('no_capacity', 'no other game server of fleet ' .. q(rec.fleet)
    .. ' has a free world slot for world ' .. q(world))
end
release_slot(rec)
save(rec)
redis.call('SREM', hosts(name), world)
local lease, epoch = place(world, target, ttl, lease_id)
drop_answer(world)
return reply(placement(world, '', save(target), lease, epoch))
