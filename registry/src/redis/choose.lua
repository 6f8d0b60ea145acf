-- Which open server gets a new world, as registry/src/choose.rs decides it; prepended
-- (after common.lua) to the scripts that place worlds.

-- choose::fits, over a decoded request selector.
local function matches(expr, labels)
  local value = labels[expr.key]
  local listed = false
  for _, v in ipairs(expr.values or {}) do
    if v == value then listed = true end
  end
  if expr.operator == 'In' then return listed end
  if expr.operator == 'NotIn' then return not listed end
  if expr.operator == 'Exists' then return value ~= nil end
  return value == nil -- DoesNotExist
end

local function fits(rec, sel)
  local state = opt(sel.gameServerState)
  if state then
    if rec.state ~= state then return false end
  elseif not ALLOCATABLE[rec.state] then
    return false
  end
  if opt(rec.address) == nil then return false end
  if math.max(rec.worldCapacity - rec.worlds, 0) < math.max(opt(sel.minFreeWorlds) or 1, 1) then return false end
  if math.max(rec.playerCapacity - rec.players, 0) < (opt(sel.minFreePlayers) or 0) then return false end
  for k, v in pairs(sel.matchLabels or {}) do
    if rec.labels[k] ~= v then return false end
  end
  for _, expr in ipairs(sel.matchExpressions or {}) do
    if not matches(expr, rec.labels) then return false end
  end
  return true
end

-- The request's priorities over a and b: -1 when a comes first, 1 when b, 0 on a tie.
-- Priority keys ("worlds", "players") are the record's field names.
local function by_priorities(a, b, req)
  for _, p in ipairs(req.priorities) do
    local x, y = a[p.key], b[p.key]
    if x ~= y then
      local c = x < y and -1 or 1
      if p.order == 'Descending' then c = -c end
      return c
    end
  end
  return 0
end

local PAGE = 32

-- choose::first_fit over the open index `key`, by rank, a page of names at a time.
-- Distributed walks (worlds, name) upwards; Packed walks groups of equal worlds from
-- the fullest down, names upwards within a group, and stops at the first group with a
-- fit. Without priorities the first fit wins. With them the walk keeps the best fit of
-- the scope (the group, or for Distributed every server), replacing it only when the
-- priorities strictly prefer a later one: the walk order already breaks ties on worlds
-- and then name exactly as choose::prefer does.
local function first_fit(key, req, accept)
  local best
  local function visit(first, last)
    for from = first, last, PAGE do
      for _, name in ipairs(redis.call('ZRANGE', key, from, math.min(from + PAGE - 1, last))) do
        local rec = accept(name)
        if rec then
          if #req.priorities == 0 then return rec end
          if not best or by_priorities(rec, best, req) < 0 then best = rec end
        end
      end
    end
    return best
  end
  local last = redis.call('ZCARD', key) - 1
  if req.strategy == 'Distributed' then return visit(0, last) end
  while last >= 0 do
    local top = redis.call('ZRANGE', key, last, last, 'WITHSCORES')
    local first = redis.call('ZCOUNT', key, '-inf', '(' .. top[2])
    local found = visit(first, last)
    if found then return found end
    last = first - 1
  end
  return nil
end

-- choose / OpenIndex::choose: regions in order (the fleet-wide index when none), then
-- selectors in order (one that matches any open server when none); the first pair with
-- a fit decides. `exclude` is never chosen.
local function choose(req, exclude)
  local keys = {}
  for i, region in ipairs(req.regions) do keys[i] = open_in(region) end
  if #keys == 0 then keys[1] = K.open end
  local selectors = req.selectors
  if #selectors == 0 then selectors = { {} } end
  for _, key in ipairs(keys) do
    for _, sel in ipairs(selectors) do
      local found = first_fit(key, req, function(name)
        if name == exclude then return nil end
        local rec = load(name)
        if rec and fits(rec, sel) then return rec end
        return nil
      end)
      if found then return found end
    end
  end
  return nil
end
