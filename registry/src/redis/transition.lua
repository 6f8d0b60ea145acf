-- Registry::transition. ARGV[3]: name; [4]: the state to move to. Answers the record's JSON.
local name, to = ARGV[3], ARGV[4]
local rec = load(name)
if not rec then return fail('not_found', name) end
local err = transition(rec, to)
if err then return err end
return reply(cjson.encode(rec))
