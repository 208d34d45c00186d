-- Change a push request's chain record (push_requests.py), only while it exists, and tell the
-- dispatcher carrying the request. ARGV: prefix, chain, fields...: name, value pairs to set.
-- One step, so a record that expires meanwhile stays gone instead of coming back as a few fields
-- with no expiry. Returns 1 when set, 0 when the record is gone.
local key = k('push', ARGV[2])
if redis.call('EXISTS', key) == 0 then
  return 0
end
redis.call('HSET', key, unpack(ARGV, 3))
redis.call('PUBLISH', k('ended'), ARGV[2])
return 1
