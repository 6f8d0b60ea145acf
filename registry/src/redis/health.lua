-- Registry::health: the SDK's ping. ARGV[3]: name.
local name = ARGV[3]
local rec = load(name)
if not rec then return fail('not_found', name) end
if TERMINAL[rec.state] then return fail('conflict', 'game server ' .. q(name) .. ' is ' .. rec.state) end
heard_from(rec)
return reply()
