-- Cancel a job. ARGV: prefix, id, owner ('' = admin, any owner), now_ms, retention_ms.
-- Returns {'cancelled', user} (was waiting: removed) | {'requested', user} (running: its worker's
-- waiting heartbeat is answered at once through {p}:cancels) | {'finished', user} | {'missing'} |
-- {'closed'} (after the evening's snapshot, which holds the job as it was: it would run again).
local id, owner, now, retention_ms = ARGV[2], ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5])
if closed() then
  return {'closed'}
end
local key = k('job', id)
local f = redis.call('HMGET', key, 'state', 'user', 'scope')
local state, user = f[1], f[2]
if not state or (owner ~= '' and owner ~= user) then
  return {'missing'}
end

local function round_of(job_id)
  return math.floor((tonumber(redis.call('HGET', k('job', job_id), 'score')) % SEGMENT) / ROUND)
end

-- Fair order: the owner's rounds that nothing of hers ran in or waits in are hers again, so her next
-- job goes one round after the latest of her jobs that ran (fair:user_served, lease_job in lib.lua)
-- or still waits, as if the cancelled ones had never been queued. Otherwise each cancel pushed her
-- next job a round further back, behind everyone else's second, third... job. A round given back is
-- never one she ran in, so cancelling and queueing again gets nobody ahead of their turn.
local function give_rounds_back()
  local last = tonumber(redis.call('HGET', k('fair:user_served'), user) or '-1')
  for _, other in ipairs(redis.call('SMEMBERS', k('user', user, 'queued'))) do
    last = math.max(last, round_of(other))
  end
  if last < tonumber(redis.call('HGET', k('fair:user_round'), user) or '-1') then
    redis.call('HSET', k('fair:user_round'), user, last)
  end
end

if state == 'queued' then
  dequeue(id, user, f[3])
  give_rounds_back()
  finish(id, 'cancelled', now, retention_ms)
  return {'cancelled', user}
end
if state == 'leased' or state == 'running' then
  redis.call('HSET', key, 'cancel', '1')
  redis.call('PUBLISH', k('cancels'), id)
  return {'requested', user}
end
return {'finished', user}
