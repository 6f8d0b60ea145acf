-- Prepended to every registry script (allocate and move_world also get choose.lua): the
-- fleet's keys, the clock, server records and the open index, slots, epochs and the
-- lifecycle table.
--
-- KEYS[1] is the fleet's key base `{prefix}{fleet}:`. The braces make the fleet a hash
-- tag, so every key derived from KEYS[1] below lives in the same cluster slot as it.
-- ARGV[1] is the events channel, ARGV[2] the calling registry's id; each script's own
-- arguments start at ARGV[3]. Scripts answer {events, 'ok', payload...} or
-- {'', error code, args...}; an error is always answered before anything is written.

local F = KEYS[1]
local K = {
  servers = F .. 'servers',          -- hash: name -> GameServer JSON
  open = F .. 'open',                -- zset: open servers, score worlds (see save)
  health = F .. 'health',            -- zset: live servers, score = ms when silence makes them Unhealthy
  tombstones = F .. 'tombstones',    -- zset: terminal servers, score = ms they became terminal
  worlds = F .. 'worlds',            -- hash: world -> server holding it
  leases = F .. 'leases',            -- hash: world -> lease id, while unconfirmed
  lease_expiry = F .. 'lease-expiry', -- zset: world, score = lease expiry ms
  epochs = F .. 'epochs',            -- hash: world -> last epoch handed out
  epoch_at = F .. 'epoch-at',        -- zset: world, score = ms of that assignment
  idem_of = F .. 'idem-of',          -- hash: world -> idempotency key whose answer placed it
                                     -- (idem:<key> is a hash: answer, world; it expires with the lease)
  known = F .. 'known',              -- string: set once a server was scheduled in the fleet
  regions = F .. 'regions',          -- set: declared regions, and those of servers scheduled
}
local function open_in(region) return F .. 'open:' .. region end
local function hosts(server) return F .. 'hosts:' .. server end
local function idem(key) return F .. 'idem:' .. key end

-- Redis' clock, so that every process sharing the registry agrees on time.
local NOW = (function()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end)()

-- Epochs and ms timestamps are integers below 2^53: exact as Lua numbers, but
-- tostring and cjson would print them with 14 significant digits.
local function int(n) return string.format('%.0f', n) end

-- cjson turns JSON null into cjson.null, not nil.
local function opt(v)
  if v == cjson.null then return nil end
  return v
end

-- Rust's {:?} of a string, for error messages that match the memory backend's.
local function q(s) return '"' .. (s:gsub('\\', '\\\\'):gsub('"', '\\"')) .. '"' end

-- cjson encodes an empty table as {}; the caller expects a list.
local function list_json(t)
  if #t == 0 then return '[]' end
  return cjson.encode(t)
end

local events = {}

local function emit(kind, rec)
  local e = { kind = kind, fleet = rec.fleet, region = rec.region }
  if kind == 'StateChanged' then
    e.name, e.state = rec.name, rec.state
  end
  events[#events + 1] = e
end

-- Publishes what this call changed to the other registries and hands the same message
-- back to the caller, whose own subscribers get it before the call returns.
local function reply(...)
  local message = ''
  if #events > 0 then
    message = cjson.encode({ origin = ARGV[2], events = events })
    redis.call('PUBLISH', ARGV[1], message)
  end
  return { message, 'ok', ... }
end

local function fail(code, ...) return { '', code, ... } end

local TERMINAL = { Shutdown = true, Unhealthy = true, Error = true }
local ALLOCATABLE = { Ready = true, Allocated = true }

-- GameServerState::can_transition: besides these, staying put and falling into a
-- terminal state are legal from every live state.
local LEGAL = {
  Scheduled = { Ready = true, Reserved = true },
  Ready = { Allocated = true, Reserved = true, Draining = true },
  Allocated = { Ready = true, Reserved = true, Draining = true },
  Reserved = { Ready = true, Allocated = true, Draining = true },
  Draining = {},
}

local function can_transition(from, to)
  if TERMINAL[from] then return false end
  return from == to or TERMINAL[to] or LEGAL[from][to] or false
end

-- Records decoded in this call, by name; a record is decoded once however often the
-- choice looks at it.
local records = {}

local function load(name)
  if records[name] == nil then
    local json = redis.call('HGET', K.servers, name)
    records[name] = json and cjson.decode(json) or false
  end
  return records[name] or nil
end

-- choose::is_open: allocatable, registered, with a free slot.
local function is_open(rec)
  return ALLOCATABLE[rec.state] and opt(rec.address) ~= nil and rec.worlds < rec.worldCapacity
end

-- Writes `rec` back and files it in the open index, ordered by (worlds, name): equal
-- scores sort by member bytewise, exactly as OpenIndex's (u32, String) tuples. Every
-- change to a record goes through here, so the index never lags its state, address or
-- world count. Answers the record's JSON.
local function save(rec)
  records[rec.name] = rec
  local json = cjson.encode(rec)
  redis.call('HSET', K.servers, rec.name, json)
  if is_open(rec) then
    redis.call('ZADD', K.open, rec.worlds, rec.name)
    redis.call('ZADD', open_in(rec.region), rec.worlds, rec.name)
  else
    redis.call('ZREM', K.open, rec.name)
    redis.call('ZREM', open_in(rec.region), rec.name)
  end
  return json
end

local function timeout_ms(rec)
  return rec.health.periodSeconds * rec.health.failureThreshold * 1000
end

-- The server spoke (registered or pinged): silence is counted from now.
local function heard_from(rec)
  redis.call('ZADD', K.health, NOW + timeout_ms(rec), rec.name)
end

local function set_state(rec, to)
  if rec.state ~= to then
    rec.state = to
    emit('StateChanged', rec)
  end
end

-- Takes one world slot on `rec`; a Ready server becomes Allocated.
local function take_slot(rec)
  rec.worlds = rec.worlds + 1
  emit('Allocated', rec)
  if rec.state == 'Ready' then set_state(rec, 'Allocated') end
end

-- Gives back one world slot; an Allocated server with no world left is Ready again.
local function release_slot(rec)
  rec.worlds = math.max(rec.worlds - 1, 0)
  emit('Released', rec)
  if rec.worlds == 0 and rec.state == 'Allocated' then set_state(rec, 'Ready') end
end

-- Forgets the idempotent answer that placed `world`: a repeat must not send players
-- where the world no longer is. A key whose answer expired may since have answered a
-- newer allocation; that answer stays.
local function drop_answer(world)
  local key = redis.call('HGET', K.idem_of, world)
  if key then
    if redis.call('HGET', idem(key), 'world') == world then redis.call('DEL', idem(key)) end
    redis.call('HDEL', K.idem_of, world)
  end
end

local function clear_lease(world)
  redis.call('HDEL', K.leases, world)
  redis.call('ZREM', K.lease_expiry, world)
end

-- `world` is placed nowhere any more. Its epoch stays (see bump_epoch).
local function forget_world(world, server)
  redis.call('HDEL', K.worlds, world)
  redis.call('SREM', hosts(server), world)
  clear_lease(world)
  drop_answer(world)
end

local function drop_worlds_of(name)
  for _, world in ipairs(redis.call('SMEMBERS', hosts(name))) do
    forget_world(world, name)
  end
end

-- Forgets server `rec` altogether (its worlds included).
local function forget_server(rec)
  drop_worlds_of(rec.name)
  redis.call('HDEL', K.servers, rec.name)
  redis.call('ZREM', K.open, rec.name)
  redis.call('ZREM', open_in(rec.region), rec.name)
  redis.call('ZREM', K.health, rec.name)
  redis.call('ZREM', K.tombstones, rec.name)
end

local function epoch_of(world)
  return tonumber(redis.call('HGET', K.epochs, world))
end

-- The next epoch of `world`, recorded as handed out: max(last + 1, now in Unix ms).
-- The clock is the floor, so an epoch forgotten after the retention (or a registry
-- flushed and rebuilt) never makes one go back; last + 1 keeps them strictly
-- increasing within a millisecond.
local function bump_epoch(world)
  local last = epoch_of(world)
  local epoch = last and math.max(last + 1, NOW) or math.max(NOW, 1)
  redis.call('HSET', K.epochs, world, int(epoch))
  redis.call('ZADD', K.epoch_at, NOW, world)
  return epoch
end

-- Assigns `world` to `rec` (allocation or move): a slot there, held by a new lease until
-- the first player joins, under the world's next epoch. The caller saves `rec`.
local function place(world, rec, ttl, lease_id)
  take_slot(rec)
  redis.call('HSET', K.worlds, world, rec.name)
  redis.call('SADD', hosts(rec.name), world)
  local lease = { id = lease_id, expires = NOW + ttl }
  redis.call('HSET', K.leases, world, lease.id)
  redis.call('ZADD', K.lease_expiry, lease.expires, world)
  return lease, bump_epoch(world)
end

local function lease_of(world)
  local id = redis.call('HGET', K.leases, world)
  if not id then return nil end
  return { id = id, expires = tonumber(redis.call('ZSCORE', K.lease_expiry, world)) }
end

-- A Placement as JSON, built by hand so that the epoch and the lease expiry keep all
-- their digits. `server_json` is the record as save answered it.
local function placement(world, player, server_json, lease, epoch)
  local lease_json = 'null'
  if lease then
    lease_json = '{"id":' .. cjson.encode(lease.id) .. ',"expiresAtMs":' .. int(lease.expires) .. '}'
  end
  return '{"worldId":' .. cjson.encode(world) .. ',"playerId":' .. cjson.encode(player)
    .. ',"server":' .. server_json .. ',"lease":' .. lease_json .. ',"epoch":' .. int(epoch) .. '}'
end

-- Moves `rec` to `to` through the lifecycle rules and saves it; a terminal state frees
-- its worlds and starts its tombstone time. Answers an error reply when illegal.
local function transition(rec, to)
  if not can_transition(rec.state, to) then return fail('illegal', rec.state, to) end
  -- "Ready" from a server that still hosts worlds means ready for more: it stays
  -- Allocated, which is Ready-and-hosting.
  if to == 'Ready' and rec.worlds > 0 then to = 'Allocated' end
  set_state(rec, to)
  if TERMINAL[to] then
    drop_worlds_of(rec.name)
    for _ = 1, rec.worlds do emit('Released', rec) end
    rec.worlds = 0
    redis.call('ZREM', K.health, rec.name)
    redis.call('ZADD', K.tombstones, NOW, rec.name)
  end
  save(rec)
  return nil
end
