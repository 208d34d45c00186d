-- Forget a participant's oldest finished jobs once her kept jobs pass max_bytes, or she keeps more
-- than max_jobs (store.py, after each of her submits): their records go as at the end of their
-- retention, as ComfyUI's history drops its oldest entries. Waiting, running and dead-lettered
-- jobs are never forgotten. A job's bytes are its workflow and what its worker reported (outputs,
-- error, cached nodes): a fake worker on a leaked pool token can make those as large as a
-- request may be. ARGV: prefix, user, max_bytes, max_jobs.
-- Returns how many jobs were forgotten.
local user, max_bytes, max_jobs = ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local listed = k('user', user, 'jobs')
local total, count, forgotten = 0, 0, 0
for _, id in ipairs(redis.call('ZREVRANGE', listed, 0, -1)) do
  local key = k('job', id)
  for _, field in ipairs({'spec', 'outputs', 'error', 'cached'}) do
    total = total + redis.call('HSTRLEN', key, field)
  end
  count = count + 1
  if total > max_bytes or count > max_jobs then  -- only then is the state read: most submits stop here
    local f = redis.call('HMGET', key, 'state', 'dead')
    local finished = f[1] == 'succeeded' or f[1] == 'failed' or f[1] == 'cancelled'
    if finished and f[2] ~= '1' then
      redis.call('DEL', key)
      redis.call('ZREM', listed, id)
      forgotten = forgotten + 1
    end
  end
end
return forgotten
