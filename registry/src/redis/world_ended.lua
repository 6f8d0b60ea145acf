-- Registry::world_ended. ARGV[3]: name; [4]: world. Ending a world twice (an SDK retry)
-- is not an error.
local name, world = ARGV[3], ARGV[4]
local rec = load(name)
if not rec then return fail('not_found', name) end
if redis.call('HGET', K.worlds, world) == name then
  forget_world(world, name)
  release_slot(rec)
  save(rec)
end
return reply()
