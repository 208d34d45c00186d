-- A catalogue version becomes the approved one the workspaces serve (catalogues.py): the admin's
-- approval of a waiting version, or a version that only adds, approved on its offer.
-- ARGV: prefix, digest, waiting ('1': the admin's, only of a version that waits for her).
-- Returns {'ok'} | {'missing'} (no such version waits) | {'closed'} (after the evening's snapshot,
-- which holds the version approved before: the approval would be lost, and the morning's worker
-- would offer the version again as if never approved).
local digest = ARGV[2]
if closed() then
  return {'closed'}
end
if ARGV[3] == '1' and redis.call('HEXISTS', k('catalogue_pending'), digest) == 0 then
  return {'missing'}
end
redis.call('SET', k('catalogue_current'), digest)
redis.call('HDEL', k('catalogue_pending'), digest)
return {'ok'}
