-- item_stat_buckets: multi-granularity discretization (MARN §3.1.1). Every statistic becomes two
--   categorical features: its equal-frequency bucket among the catalogue's items, in 0..9 and in
--   0..99. Items without activity take the statistic's empty value (0 for counts, the prior
--   for smoothed CTRs); equal values share a bucket (percent_rank).
-- inputs:  item_stats_long (item_id, stat, value: the day's window statistics, one row each),
--          stat_names (stat, empty_value: every statistic of the config), raw.items (the catalogue)
-- outputs: item_id, stat, b10 (int32), b100 (int32), in any order (the job pivots them to one
--          row per item, sorted by id)
-- params:  none
WITH catalogue AS (SELECT DISTINCT item_id FROM raw.items),
stats AS (SELECT stat, empty_value FROM stat_names),
filled AS (
  SELECT c.item_id, s.stat, coalesce(v.value, s.empty_value) AS value
  FROM catalogue c
  CROSS JOIN stats s
  LEFT JOIN item_stats_long v ON v.item_id = c.item_id AND v.stat = s.stat
)
SELECT
  item_id,
  stat,
  CAST(least(9, floor(percent_rank() OVER (PARTITION BY stat ORDER BY value) * 10)) AS INT) AS b10,
  CAST(least(99, floor(percent_rank() OVER (PARTITION BY stat ORDER BY value) * 100)) AS INT) AS b100
FROM filled
