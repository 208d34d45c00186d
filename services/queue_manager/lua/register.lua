-- Record a worker (again, after a restart). ARGV: prefix, worker_id, pool, capabilities_json,
-- state, now_ms, ttl_seconds.
-- A worker that registers again knows of no job: its record names none, and a job still held
-- (prepared) for it is given back in the same step (still queued, no attempt counted), so busy
-- workers of its pool may prepare it at once and the admin no longer sees it held.
local worker_id, now, ttl = ARGV[2], tonumber(ARGV[6]), tonumber(ARGV[7])
local held = end_hold_of(worker_id)
local key = k('worker', worker_id)
redis.call('HSET', key, 'pool', ARGV[3], 'capabilities', ARGV[4], 'state', ARGV[5], 'job_id', '',
  'registered_at', now, 'last_seen', now)
redis.call('EXPIRE', key, ttl)
redis.call('ZADD', k('workers'), now, worker_id)
redis.call('ZREMRANGEBYSCORE', k('workers'), '-inf', now - ttl * 1000)
return held or ''
