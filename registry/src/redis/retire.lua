-- Registry::retire: an idle server to Shutdown in one step, so that no allocation lands
-- on it meanwhile. ARGV[3]: name. Answers the record's JSON.
local name = ARGV[3]
local rec = load(name)
if not rec then return fail('not_found', name) end
local idle = { Scheduled = true, Ready = true, Reserved = true }
if rec.worlds > 0 or not idle[rec.state] then
  return fail('conflict', 'game server ' .. q(name) .. ' is ' .. rec.state .. ' with ' .. rec.worlds
    .. ' world(s); only an idle server is retired')
end
local err = transition(rec, 'Shutdown')
if err then return err end
return reply(cjson.encode(rec))
