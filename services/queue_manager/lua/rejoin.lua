-- The morning's restore: jobs queued before it ran (after the snapshot was taken, on the fresh
-- Redis, so in round 0 with queue numbers from 1) take their turn as if queued just after it. In
-- submit order each gets the next queue number and, unless fifo, the round a submit now would give
-- it (one after its owner's last, never before the round last night dispatched); its priority level
-- is kept; one queued with ComfyUI's ``front`` goes just before its owner's first waiting job
-- (last night's, or one already moved). Once per Redis and snapshot: {p}:holds then names the
-- snapshot, and a restore of it run again (or one into the Redis that saved it) moves nothing.
-- ARGV: prefix, mode, snapshot (its taken_at, ISO 8601), taken_at_ms, night_round, user_rounds...
-- (user, round pairs: the snapshot's fair:user_round). Returns how many jobs moved.
local mode, snapshot, taken_at = ARGV[2], ARGV[3], tonumber(ARGV[4])
if redis.call('GET', k('holds')) == snapshot then
  return 0
end
redis.call('SET', k('holds'), snapshot)
local rounds, touched = {}, {}
for i = 6, #ARGV, 2 do
  rounds[ARGV[i]] = tonumber(ARGV[i + 1])
end
local live = tonumber(redis.call('GET', k('fair:round')) or '0')
local current = math.max(tonumber(ARGV[5]) or 0, live)
if current > live then
  redis.call('SET', k('fair:round'), current)  -- the night's, where the morning's dispatch was behind
end

local early, moving = {}, {}
for _, scope in ipairs(redis.call('SMEMBERS', k('scopes'))) do
  for _, id in ipairs(redis.call('ZRANGE', k('queue', scope), 0, -1)) do
    local f = redis.call('HMGET', k('job', id), 'queued_at', 'number', 'user', 'score')
    if tonumber(f[1]) > taken_at then
      early[#early + 1] = {id = id, number = tonumber(f[2]), user = f[3], score = tonumber(f[4]), scope = scope}
      moving[id] = true
    end
  end
end
table.sort(early, function(a, b) return math.abs(a.number) < math.abs(b.number) end)

for _, job in ipairs(early) do
  local number = redis.call('INCR', k('seq'))
  local round = 0
  if mode ~= 'fifo' then
    round = math.min(9999, math.max((rounds[job.user] or -1) + 1, current))
    rounds[job.user], touched[job.user] = round, true
  end
  local score = math.floor(job.score / SEGMENT) * SEGMENT + round * ROUND + number % ROUND
  moving[job.id] = nil
  if job.number < 0 then
    score = math.min(score, first_queued_score(job.user, moving) - 1)
    number = -number  -- ComfyUI's ``front``: its number stays negative
  end
  score = fmt(score)
  redis.call('HSET', k('job', job.id), 'score', score, 'number', fmt(number))
  redis.call('ZADD', k('queue', job.scope), score, job.id)
end
for user in pairs(touched) do
  if rounds[user] > tonumber(redis.call('HGET', k('fair:user_round'), user) or '-1') then
    redis.call('HSET', k('fair:user_round'), user, rounds[user])
  end
end
return #early
