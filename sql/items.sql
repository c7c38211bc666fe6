-- items: the item side table of the day: every catalogue item with what changes daily (its stat
--   buckets) and where its content is (content_dt: the item_content partition holding its ids,
--   title tokens, image embedding and price). Looked up by item id at batch time rather than
--   copied into every sample row; the trainer joins the content by (item_id, content_dt), as
--   `SELECT ... FROM features.items i JOIN features.item_content c
--    ON c.item_id = i.item_id AND c.dt = i.content_dt` does.
-- inputs:  raw.items (the checked catalogue), item_digests (item_id, content_digest),
--          previous_items (item_id, content_dt, content_digest of the day before; may be empty),
--          item_stat_buckets_wide (the day's buckets)
-- outputs: item_id, content_dt, content_digest, <stat>_b10 / <stat>_b100 for every statistic
-- params:  $1 = the day (YYYY-MM-DD)
SELECT
  i.item_id,
  CASE WHEN p.content_digest = d.content_digest THEN p.content_dt ELSE CAST($1 AS VARCHAR) END AS content_dt,
  d.content_digest,
  k.* EXCLUDE (item_id)
FROM raw.items i
JOIN item_digests d ON d.item_id = i.item_id
LEFT JOIN previous_items p ON p.item_id = i.item_id
LEFT JOIN item_stat_buckets_wide k ON k.item_id = i.item_id
ORDER BY i.item_id
