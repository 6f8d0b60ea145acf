-- Registry::schedule. ARGV[3]: the GameServer JSON.
local rec = cjson.decode(ARGV[3])
if redis.call('HEXISTS', K.servers, rec.name) == 1 then return fail('already_exists', rec.name) end
-- Tells allocate an unknown fleet from one without capacity, after its servers are gone.
redis.call('SET', K.known, '1')
redis.call('SADD', K.regions, rec.region)
if TERMINAL[rec.state] then
  redis.call('ZADD', K.tombstones, NOW, rec.name)
else
  -- The first ping is due after the initial delay.
  redis.call('ZADD', K.health, NOW + rec.health.initialDelaySeconds * 1000 + timeout_ms(rec), rec.name)
end
emit('StateChanged', rec)
save(rec)
return reply()
