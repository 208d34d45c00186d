-- Change a push request's chain record (push_requests.py), only while it exists, and tell the
-- dispatcher carrying the request. ARGV: prefix, chain, fields...: name, value pairs to set.
-- One step, so a record that expires meanwhile stays gone instead of coming back as a few fields
-- with no expiry. A new current job's lease token joins the request's ({p}:push_leases:{chain}, the
-- leases its reply token acts on), kept as long as the record. Returns 1 when set, 0 when gone.
local key = k('push', ARGV[2])
if redis.call('EXISTS', key) == 0 then
  return 0
end
redis.call('HSET', key, unpack(ARGV, 3))
local life = redis.call('PTTL', key)
for i = 3, #ARGV - 1, 2 do
  if ARGV[i] == 'token' and life > 0 then
    local leases = k('push_leases', ARGV[2])
    redis.call('SADD', leases, ARGV[i + 1])
    redis.call('PEXPIRE', leases, life)
  end
end
redis.call('PUBLISH', k('ended'), ARGV[2])
return 1
