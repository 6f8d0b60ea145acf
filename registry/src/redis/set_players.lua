-- Registry::set_players. ARGV[3]: name; [4]: the player count.
local name = ARGV[3]
local rec = load(name)
if not rec then return fail('not_found', name) end
rec.players = tonumber(ARGV[4])
save(rec)
return reply()
