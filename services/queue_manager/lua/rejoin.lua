-- The morning's restore: jobs queued before it ran (after the snapshot was taken, on the fresh
-- Redis, so in round 0 with queue numbers from 1) take their turn as if queued just after it. First
-- the fair rounds go back to the night's where the morning's are behind (the restore's merge keeps
-- what is there); then, in submit order, each job gets the next queue number and, unless fifo, the
-- round a submit now would give it (next_round, from its owner's round of last night); its priority
-- level is kept; one queued with ComfyUI's ``front`` goes just before its owner's first waiting job
-- (last night's, or one already moved). Once per Redis and snapshot: {p}:holds then names the
-- snapshot, and a restore of it run again (or one into the Redis that saved it) moves nothing.
-- ARGV: prefix, mode, snapshot (its taken_at, ISO 8601), night_json (the snapshot's fair:round as
-- "round", and its fair:queue_round, fair:user_round and fair:user_served hashes), night_ids... (the
-- snapshot's waiting jobs). A waiting job the snapshot does not hold is one queued before the
-- restore: told by its id, not by its queue time, as last evening's server clock (that of the
-- snapshot's taken_at) may run ahead of this morning's new server's.
-- Returns how many jobs moved.
local mode, snapshot = ARGV[2], ARGV[3]
if redis.call('GET', k('holds')) == snapshot then
  return 0
end
redis.call('SET', k('holds'), snapshot)
local night = cjson.decode(ARGV[4])
local from_night = {}
for i = 5, #ARGV do
  from_night[ARGV[i]] = true
end

-- Raise a round (a string key, or a hash's field) to `value` when it is below (or absent).
local function at_least(key, field, value)
  local now
  if field then
    now = redis.call('HGET', key, field)
  else
    now = redis.call('GET', key)
  end
  if tonumber(value) and tonumber(value) > (tonumber(now) or -1) then
    if field then
      redis.call('HSET', key, field, value)
    else
      redis.call('SET', key, value)
    end
  end
end

at_least(k('fair:round'), nil, night.round)
for _, name in ipairs({'queue_round', 'user_round', 'user_served'}) do
  for field, value in pairs(night[name]) do
    at_least(k('fair:' .. name), field, value)
  end
end

local early, moving = {}, {}
for _, scope in ipairs(redis.call('SMEMBERS', k('scopes'))) do
  for _, id in ipairs(redis.call('ZRANGE', k('queue', scope), 0, -1)) do
    if not from_night[id] then
      local f = redis.call('HMGET', k('job', id), 'number', 'user', 'score')
      early[#early + 1] = {id = id, number = tonumber(f[1]), user = f[2], score = tonumber(f[3]), scope = scope}
      moving[id] = true
    end
  end
end
table.sort(early, function(a, b) return math.abs(a.number) < math.abs(b.number) end)

local replayed = {}
for _, job in ipairs(early) do
  local number = redis.call('INCR', k('seq'))
  local segment = math.floor(job.score / SEGMENT)
  local round = 0
  if mode ~= 'fifo' then
    if not replayed[job.user] then  -- her turns go on from last night's, not from this morning's
      replayed[job.user] = true
      redis.call('HDEL', k('fair:user_round'), job.user)
      at_least(k('fair:user_round'), job.user, night.user_round[job.user])
    end
    round = next_round(job.user, job.scope, segment)
  end
  local score = segment * SEGMENT + round * ROUND + number % ROUND
  moving[job.id] = nil
  if job.number < 0 then
    score = math.min(score, first_queued_score(job.user, moving) - 1)
    number = -number  -- ComfyUI's ``front``: its number stays negative
  end
  score = fmt(score)
  redis.call('HSET', k('job', job.id), 'score', score, 'number', fmt(number))
  redis.call('ZADD', k('queue', job.scope), score, job.id)
end
return #early
