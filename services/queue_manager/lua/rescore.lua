-- Recompute the schedule score of jobs after an admin changed a job's or a user's priority;
-- only the priority level changes, so fair order inside a level is kept. ARGV: prefix, mode, ids...
-- Returns the number of queued jobs that moved.
local mode = ARGV[2]
local moved = 0
for i = 3, #ARGV do
  local id = ARGV[i]
  local key = k('job', id)
  local f = redis.call('HMGET', key, 'user', 'scope', 'score', 'priority')
  if f[1] then
    local level = 0
    if mode == 'priority' then
      level = clamp_priority(tonumber(f[4]) + tonumber(redis.call('HGET', k('user_priority'), f[1]) or '0'))
    end
    local score = fmt((100 - level) * SEGMENT + tonumber(f[3]) % SEGMENT)
    redis.call('HSET', key, 'score', score)
    if redis.call('ZSCORE', k('queue', f[2]), id) then
      redis.call('ZADD', k('queue', f[2]), score, id)
      moved = moved + 1
    end
  end
end
return moved
