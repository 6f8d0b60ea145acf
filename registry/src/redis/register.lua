-- Registry::register, once the record exists. ARGV[3]: name; [4]: the RegisterRequest
-- JSON. Answers the record's JSON.
local name, req = ARGV[3], cjson.decode(ARGV[4])
local rec = load(name)
if not rec then return fail('not_found', name) end
if rec.fleet ~= req.fleet or rec.region ~= req.region then
  return fail('conflict', 'game server ' .. q(name) .. ' is scheduled in fleet ' .. q(rec.fleet) .. ' region '
    .. q(rec.region) .. ', not ' .. q(req.fleet) .. '/' .. q(req.region))
end
if TERMINAL[rec.state] then return fail('conflict', 'game server ' .. q(name) .. ' is ' .. rec.state) end
rec.address = req.address
for k, v in pairs(req.labels) do rec.labels[k] = v end
heard_from(rec)
return reply(save(rec))
