-- Record a worker (again, after a restart). ARGV: prefix, worker_id, pool, capabilities_json,
-- state, now_ms, ttl_seconds, live_ms, limit.
-- A pool's token keeps at most `limit` workers registered and live (heard from within live_ms):
-- one more worker id is refused ({'full'}), changing nothing; the pool's own ids re-register.
-- A worker heard from within live_ms (its models sync's progress reports, then ready; a restart of
-- its agent) keeps its registered_at: its host was up, and paid for, all along (the admin page's
-- cost and GPU busy fraction). One silent for longer starts anew.
-- A worker that registers again knows of no job: its record names none, and a job still held
-- (prepared) for it is given back in the same step (still queued, no attempt counted), so busy
-- workers of its pool may prepare it at once and the admin no longer sees it held.
local worker_id, pool, now, ttl = ARGV[2], ARGV[3], tonumber(ARGV[6]), tonumber(ARGV[7])
local live = redis.call('ZRANGEBYSCORE', k('workers'), now - tonumber(ARGV[8]), '+inf')
local count, known = 0, false
for _, id in ipairs(live) do
  if id == worker_id then
    known = true
  elseif redis.call('HGET', k('worker', id), 'pool') == pool then
    count = count + 1
  end
end
if not known and count >= tonumber(ARGV[9]) then
  return {'full'}
end
local held = end_hold_of(worker_id)
local key = k('worker', worker_id)
local before = redis.call('HMGET', key, 'registered_at', 'last_seen')
local since = now
if before[1] and before[2] and now - tonumber(before[2]) <= tonumber(ARGV[8]) then
  since = before[1]
end
redis.call('HSET', key, 'pool', pool, 'capabilities', ARGV[4], 'state', ARGV[5], 'job_id', '',
  'registered_at', since, 'last_seen', now)
redis.call('EXPIRE', key, ttl)
redis.call('ZADD', k('workers'), now, worker_id)
redis.call('ZREMRANGEBYSCORE', k('workers'), '-inf', now - ttl * 1000)
return {'ok', held or ''}
