-- samples: one row per exposure of the day: the candidate's ids and stat buckets, the label, and
--   the user's most recent T behaviors strictly before the exposure time (oldest first): item
--   ids, behavior types and seconds before the exposure. Point-in-time correct: only behaviors
--   before the exposure and statistics known at the end of the previous day reach a row.
-- inputs:  labels, previous_history (user state at the end of the previous day), behaviors (this
--          day's accepted rows), raw.items, item_stat_buckets_wide (the day's buckets, one column
--          per <stat>_b10 / <stat>_b100)
-- outputs: request_id, user_id, item_id, event_time, label, shop_id, brand_id, category_id,
--          <stat>_b10, <stat>_b100 for every statistic, hist_item_ids, hist_behaviors,
--          hist_seconds_before
-- params:  $1 = T (the sequence length)
WITH candidate_events AS (
  SELECT user_id, event_time, item_id, behavior FROM previous_history
  UNION ALL
  SELECT user_id, event_time, item_id, behavior FROM behaviors
),
-- A sequence depends on (user, exposure time) alone: the items of one slate share it, so each is
-- built once per distinct pair and joined back to every exposure.
history AS (
  SELECT l.user_id, l.event_time AS exposure_time,
         b.event_time, b.item_id, b.behavior,
         row_number() OVER (
           PARTITION BY l.user_id, l.event_time
           ORDER BY b.event_time DESC, b.item_id DESC, b.behavior DESC) AS recency
  FROM (SELECT DISTINCT user_id, event_time FROM labels) l
  JOIN candidate_events b ON b.user_id = l.user_id AND b.event_time < l.event_time
),
-- Oldest first: the reverse of recency. ordered_list(value, key) is marnflow's
-- array_agg(value ORDER BY key), faster on long lists (pipeline/src/sql_functions.rs). The lists
-- leave as list views, which the last join repeats for each item of a slate by reference.
sequences AS (
  SELECT user_id, exposure_time,
         arrow_cast(ordered_list(item_id, age), 'ListView(Utf8)') AS hist_item_ids,
         arrow_cast(ordered_list(behavior, age), 'ListView(Utf8)') AS hist_behaviors,
         arrow_cast(
           ordered_list(CAST((CAST(exposure_time AS BIGINT) - CAST(event_time AS BIGINT)) / 1000 AS BIGINT), age),
           'ListView(Int64)') AS hist_seconds_before
  FROM (SELECT *, -CAST(recency AS BIGINT) AS age FROM history WHERE recency <= $1)
  GROUP BY user_id, exposure_time
)
-- The exposures, with their ids and buckets, stream through the last join in the labels' order
-- while the sequences are its hash table: the wide rows come out in the order asked for, and the
-- lists are copied once, not joined, sorted and merged: list_from_view copies each row's list
-- from the view the join repeated (an exposure without earlier behaviors gets the empty list).
SELECT
  x.request_id, x.user_id, x.item_id, x.event_time, x.label,
  x.shop_id, x.brand_id, x.category_id,
  x.* EXCLUDE (request_id, user_id, item_id, event_time, label, shop_id, brand_id, category_id, position),
  list_from_view(s.hist_item_ids) AS hist_item_ids,
  list_from_view(s.hist_behaviors) AS hist_behaviors,
  list_from_view(s.hist_seconds_before) AS hist_seconds_before
FROM sequences s
RIGHT JOIN (
  SELECT l.request_id, l.user_id, l.item_id, l.event_time, l.label, l.position,
         i.shop_id, i.brand_id, i.category_id, k.* EXCLUDE (item_id)
  FROM labels l
  LEFT JOIN (SELECT item_id, max(shop_id) AS shop_id, max(brand_id) AS brand_id, max(category_id) AS category_id
             FROM raw.items GROUP BY item_id) i ON i.item_id = l.item_id
  LEFT JOIN item_stat_buckets_wide k ON k.item_id = l.item_id
) x ON s.user_id = x.user_id AND s.exposure_time = x.event_time
ORDER BY x.event_time, x.request_id, x.position, x.item_id
