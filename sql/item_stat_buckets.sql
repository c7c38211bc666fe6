-- item_stat_buckets: multi-granularity discretization (MARN §3.1.1). Every statistic becomes two
--   categorical features: its equal-frequency bucket among the catalogue's items, in 0..9 and in
--   0..99. Equal values share a bucket (percent_rank).
-- inputs:  item_stats_long (item, stat, value): one row per catalogue item and statistic, items
--          without activity already given the statistic's empty value (0 for counts, the prior
--          for smoothed CTRs). item is the item's place in the catalogue sorted by id, stat the
--          statistic's place in the config's list: small integers, cheap to partition and pivot.
-- outputs: item, stat, b10 (int32), b100 (int32), one row per input row, in any order (the job
--          pivots them to one row per item, sorted by id, with <stat>_b10 / <stat>_b100 columns)
-- params:  none
WITH ranked AS (
  SELECT item, stat, percent_rank() OVER (PARTITION BY stat ORDER BY value) AS share_below
  FROM item_stats_long
)
SELECT
  item,
  stat,
  CAST(least(9, floor(share_below * 10)) AS INT) AS b10,
  CAST(least(99, floor(share_below * 100)) AS INT) AS b100
FROM ranked
