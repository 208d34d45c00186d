-- An idle worker's claim leased a job and found its caller gone (the HTTP client hung up): the
-- caller gives the lease back, unless a repeat of the claim (the same claim_id, claim.lua) got
-- that lease meanwhile and runs it. ARGV: prefix, worker_id, claim_id.
-- Returns 'kept' (a repeat has the lease: give nothing back) | 'release' (give it back). With
-- 'release' the claim is forgotten in this step, so no repeat after it gets a lease given back.
local key = k('worker', ARGV[2])
local f = redis.call('HMGET', key, 'claim_id', 'claim_repeated')
if ARGV[3] == '' or f[1] ~= ARGV[3] then
  return 'release'
end
if f[2] == ARGV[3] then
  return 'kept'
end
redis.call('HSET', key, 'claim_id', '', 'claimed', '')
return 'release'
