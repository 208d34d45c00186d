-- The morning's restore: jobs queued before it ran (after the snapshot was taken, on the fresh
-- Redis, so in round 0 with queue numbers from 1) take their turn as if queued just after it. In
-- submit order each gets the next queue number and, unless fifo, the round a submit now would give
-- it (one after its owner's last, never before the round last night dispatched); its priority level
-- is kept; one queued with ComfyUI's ``front`` goes just before its owner's first waiting job
-- (last night's, or one already moved). Each is marked ``rejoined``, so a restore run twice moves
-- nothing again.
-- ARGV: prefix, mode, taken_at_ms, night_round, user_rounds... (user, round pairs: the snapshot's
-- fair:user_round). Returns how many jobs moved.
local mode, taken_at = ARGV[2], tonumber(ARGV[3])
local rounds, touched = {}, {}
for i = 5, #ARGV, 2 do
  rounds[ARGV[i]] = tonumber(ARGV[i + 1])
end
local live = tonumber(redis.call('GET', k('fair:round')) or '0')
local current = math.max(tonumber(ARGV[4]) or 0, live)
if current > live then
  redis.call('SET', k('fair:round'), current)  -- the night's, where the morning's dispatch was behind
end

local early, moving = {}, {}
for _, scope in ipairs(redis.call('SMEMBERS', k('scopes'))) do
  for _, id in ipairs(redis.call('ZRANGE', k('queue', scope), 0, -1)) do
    local f = redis.call('HMGET', k('job', id), 'queued_at', 'number', 'rejoined', 'user', 'score')
    if tonumber(f[1]) > taken_at and f[3] ~= '1' then
      early[#early + 1] = {id = id, number = tonumber(f[2]), user = f[4], score = tonumber(f[5]), scope = scope}
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
  redis.call('HSET', k('job', job.id), 'score', score, 'number', fmt(number), 'rejoined', '1')
  redis.call('ZADD', k('queue', job.scope), score, job.id)
end
for user in pairs(touched) do
  if rounds[user] > tonumber(redis.call('HGET', k('fair:user_round'), user) or '-1') then
    redis.call('HSET', k('fair:user_round'), user, rounds[user])
  end
end
return #early
