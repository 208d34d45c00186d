-- Lease the next job for a worker of `pool`. ARGV: prefix, pool, worker_id, token, now_ms,
-- lease_ms, max_running_per_user (0 = none), scan_limit, prepare ('1' when the worker is busy and
-- prepares its next job: the job is held for it, not leased; hold_next in lib.lua).
-- Returns {} when nothing is eligible, else {id, queued_left, HGETALL of the job}; a lease
-- publishes the owner's 'started' event in the same step. (The logic is ``claim_next`` in lib.lua:
-- submit.lua runs it too, to hand a new job straight to a waiting worker.)
return claim_next(ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7]),
  tonumber(ARGV[8]), ARGV[9] == '1')
