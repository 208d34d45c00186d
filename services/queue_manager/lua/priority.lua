-- The organizer gives one job (job_id) or every job of a user (user: her waiting and running ones,
-- and her future ones through {p}:user_priority) a priority, and the jobs' schedule scores follow;
-- only the priority level changes, so fair order inside a level is kept. ARGV: prefix, mode,
-- job_id ('' = none), user ('' = none), priority.
-- Returns {'ok', queued jobs that moved} | {'missing'} (no such job) | {'closed'} (after the
-- evening's snapshot, which holds the old priorities: the change would be lost).
local mode, job_id, user, priority = ARGV[2], ARGV[3], ARGV[4], ARGV[5]
if closed() then
  return {'closed'}
end
local ids = {}
if job_id ~= '' then
  if redis.call('EXISTS', k('job', job_id)) == 0 then
    return {'missing'}
  end
  redis.call('HSET', k('job', job_id), 'priority', priority)
  ids = {job_id}
else
  redis.call('HSET', k('user_priority'), user, priority)
  ids = redis.call('SUNION', k('user', user, 'queued'), k('user', user, 'running'))
end
local moved = 0
for _, id in ipairs(ids) do
  local key = k('job', id)
  local f = redis.call('HMGET', key, 'user', 'scope', 'score', 'priority')
  if f[1] then
    local score = score_at_level(mode, f[1], f[4], f[3])
    redis.call('HSET', key, 'score', score)
    if redis.call('ZSCORE', k('queue', f[2]), id) then
      redis.call('ZADD', k('queue', f[2]), score, id)
      moved = moved + 1
    end
  end
end
return {'ok', moved}
