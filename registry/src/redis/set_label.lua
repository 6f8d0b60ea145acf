-- Registry::set_label. ARGV[3]: name; [4]: key; [5]: value. Answers the record's JSON.
local name = ARGV[3]
local rec = load(name)
if not rec then return fail('not_found', name) end
rec.labels[ARGV[4]] = ARGV[5]
return reply(save(rec))
