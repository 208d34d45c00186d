-- A worker is shutting down (draining). ARGV: prefix, worker_id, now_ms.
-- It claims no more, finishes or releases its job, and shows as draining until it is gone. It will
-- not start a job held for it, so that hold ends in the same step (the job stays queued, no
-- attempt counted), and claim.lua holds nothing more for it. Returns 0 for an unknown worker.
local worker_id = ARGV[2]
local key = k('worker', worker_id)
if redis.call('HEXISTS', key, 'pool') == 0 then
  return 0
end
redis.call('HSET', key, 'state', 'draining', 'last_seen', ARGV[3])
end_hold_of(worker_id)
return 1
