-- items: the item side table of the day: ids, title tokens, image embedding, price and stat
--   buckets, looked up by item id at batch time rather than copied into every sample row.
-- inputs:  raw.items, item_stat_buckets_wide (the day's buckets)
-- outputs: item_id, shop_id, brand_id, category_id, title_tokens (list of utf8),
--          image_embedding, price, <stat>_b10 / <stat>_b100 for every statistic
-- params:  none
SELECT
  i.item_id, i.shop_id, i.brand_id, i.category_id,
  string_to_array(lower(trim(i.title)), ' ') AS title_tokens,
  i.image_embedding,
  i.price,
  k.* EXCLUDE (item_id)
FROM raw.items i
LEFT JOIN item_stat_buckets_wide k ON k.item_id = i.item_id
ORDER BY i.item_id
