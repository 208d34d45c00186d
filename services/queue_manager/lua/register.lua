-- Record a worker (again, after a restart). ARGV: prefix, worker_id, pool, capabilities_json,
-- state, now_ms, ttl_seconds, live_ms, limit.
-- A pool's token keeps at most `limit` workers registered and live (heard from within live_ms):
-- one more worker id is refused ({'full'}), changing nothing; the pool's own ids re-register.
-- A worker heard from within live_ms (its models sync's progress reports, then ready; a restart of
-- its agent) keeps its registered_at: its host was up, and paid for, all along (the admin page's
-- cost and GPU busy fraction). One silent for longer starts anew, the time it was up before (to its
-- last sign of life) kept in {p}:admin:left, as for a worker that left.
-- A silent record comes alive only by registering (a claim of it is refused), so the pool's
-- live workers never pass `limit`. Of its records silent for longer than live_ms (gone), the
-- admin page keeps the `limit` last seen; older ones go, their up time kept in {p}:admin:left:
-- a leaked token's made-up ids cost a bounded number of records, and the cost so far is unchanged.
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

-- The time a record was up, from its registration to its last sign of life, is kept (keep_up_time:
-- what the admin page's cost and busy fraction keep of workers no longer listed).
local function keep_record_time(id, fields)
  if fields[1] and fields[2] and fields[3] then
    keep_up_time(fields[1], id, tonumber(fields[2]), tonumber(fields[3]))
  end
end

-- Of the pool's gone records (none seen since `cutoff`, holding no job), keep the `keep` last seen.
local function forget_gone(cutoff, keep)
  local kept = 0
  for _, id in ipairs(redis.call('ZREVRANGEBYSCORE', k('workers'), '(' .. cutoff, '-inf')) do
    local fields = redis.call('HMGET', k('worker', id), 'pool', 'registered_at', 'last_seen', 'job_id')
    if fields[1] == pool and (fields[4] or '') == '' then
      kept = kept + 1
      if kept > keep then
        end_hold_of(id)
        keep_record_time(id, fields)
        redis.call('DEL', k('worker', id))
        redis.call('ZREM', k('workers'), id)
      end
    end
  end
end

local held = end_hold_of(worker_id)
local key = k('worker', worker_id)
local before = redis.call('HMGET', key, 'pool', 'registered_at', 'last_seen')
local since = now
if before[2] and before[3] and now - tonumber(before[3]) <= tonumber(ARGV[8]) then
  since = before[2]
else
  keep_record_time(worker_id, before)
end
redis.call('HSET', key, 'pool', pool, 'capabilities', ARGV[4], 'state', ARGV[5], 'job_id', '',
  'registered_at', since, 'last_seen', now)
redis.call('EXPIRE', key, ttl)
redis.call('ZADD', k('workers'), now, worker_id)
redis.call('ZREMRANGEBYSCORE', k('workers'), '-inf', now - ttl * 1000)
forget_gone(now - tonumber(ARGV[8]), tonumber(ARGV[9]))
return {'ok', held or ''}
