-- Registry::remove: the controller removed the process. ARGV[3]: name.
local name = ARGV[3]
local rec = load(name)
if not rec then return fail('not_found', name) end
for _ = 1, rec.worlds do emit('Released', rec) end
forget_server(rec)
return reply()
