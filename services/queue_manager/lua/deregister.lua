-- A worker leaves for good (a GPU host's models sync that finished). ARGV: prefix, worker_id.
-- Its record and its place in the workers list go, and a job still held (prepared) for it is given
-- back in the same step (still queued, first in line for any worker, no attempt counted), so the
-- admin never sees a job held for a worker that is not listed. A worker running a job stays.
-- Returns {'gone', the job given back ('' = none)} | {'busy', its job's id}: finish or release it first.
local worker_id = ARGV[2]
local key = k('worker', worker_id)
local job_id = redis.call('HGET', key, 'job_id')
if job_id and job_id ~= '' then
  return {'busy', job_id}
end
local held = end_hold_of(worker_id)
redis.call('DEL', key)
redis.call('ZREM', k('workers'), worker_id)
return {'gone', held or ''}
