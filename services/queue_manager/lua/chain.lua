-- Change a push request's chain record (push_requests.py), only while it exists, and tell the
-- dispatcher carrying the request. ARGV: prefix, chain, fields...: name, value pairs to set.
-- One step, so a record that expires meanwhile stays gone instead of coming back as a few fields
-- with no expiry. A new current job joins the request's jobs ({p}:push_jobs:{chain}, which its
-- reply token acts on), kept as long as the record. Returns 1 when set, 0 when the record is gone.
local key = k('push', ARGV[2])
if redis.call('EXISTS', key) == 0 then
  return 0
end
redis.call('HSET', key, unpack(ARGV, 3))
local life = redis.call('PTTL', key)
for i = 3, #ARGV - 1, 2 do
  if ARGV[i] == 'job' and life > 0 then
    local jobs = k('push_jobs', ARGV[2])
    redis.call('SADD', jobs, ARGV[i + 1])
    redis.call('PEXPIRE', jobs, life)
  end
end
redis.call('PUBLISH', k('ended'), ARGV[2])
return 1
