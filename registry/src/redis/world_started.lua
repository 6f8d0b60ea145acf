-- Registry::world_started. ARGV[3]: name; [4]: world; [5]: the epoch the server loaded.
local name, world, epoch = ARGV[3], ARGV[4], tonumber(ARGV[5])
local rec = load(name)
if not rec then return fail('not_found', name) end
local holder = redis.call('HGET', K.worlds, world)
if holder == name then
  clear_lease(world)
  return reply()
end
if holder then
  return fail('conflict', 'world ' .. q(world) .. ' belongs to game server ' .. q(holder) .. ', not ' .. q(name))
end
-- The lease ran out just before the first player arrived, but the world now runs here:
-- count it again rather than lose track of it, unless it has been placed again since (a
-- newer epoch), which the server's checkpoints would lose to anyway.
if TERMINAL[rec.state] then return fail('conflict', 'game server ' .. q(name) .. ' is terminal') end
local last = epoch_of(world) or 0
if epoch < last then
  return fail('conflict', 'world ' .. world .. ' moved on (epoch ' .. ARGV[5] .. ' < ' .. int(last) .. ')')
end
-- A registry that lost the epoch: remember the server's, so the next assignment goes above it.
redis.call('HSET', K.epochs, world, ARGV[5])
redis.call('ZADD', K.epoch_at, NOW, world)
redis.call('HSET', K.worlds, world, name)
redis.call('SADD', hosts(name), world)
take_slot(rec)
save(rec)
return reply()
