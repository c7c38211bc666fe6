-- daily_item_counts: per item, the day's exposures, clicks, carts, purchases and purchase amount
--   (purchases times the item's price, where the price is known). The compact state from which
--   the rolling windows are rebuilt: a daily run never rescans raw history.
-- inputs:  exposures, clicks, behaviors (this day's accepted rows), raw.items
-- outputs: item_id, exposures, clicks, carts, purchases (int64), amount (float64)
-- params:  none (the day's rows are already selected)
WITH events AS (
  SELECT item_id, 1 AS exposures, 0 AS clicks, 0 AS carts, 0 AS purchases FROM exposures
  UNION ALL SELECT item_id, 0, 1, 0, 0 FROM clicks
  UNION ALL SELECT item_id, 0, 0, 1, 0 FROM behaviors WHERE behavior = 'cart'
  UNION ALL SELECT item_id, 0, 0, 0, 1 FROM behaviors WHERE behavior = 'purchase'
)
SELECT
  e.item_id,
  CAST(sum(e.exposures) AS BIGINT) AS exposures,
  CAST(sum(e.clicks) AS BIGINT) AS clicks,
  CAST(sum(e.carts) AS BIGINT) AS carts,
  CAST(sum(e.purchases) AS BIGINT) AS purchases,
  -- purchases times the one price: an exact count times one float, whatever order the rows are
  -- summed in (a sum of prices would differ in its last bits between partitionings).
  CAST(coalesce(CAST(sum(e.purchases) AS DOUBLE) * max(i.price), 0) AS DOUBLE) AS amount
FROM events e
LEFT JOIN (SELECT item_id, max(price) AS price FROM raw.items GROUP BY item_id) i ON i.item_id = e.item_id
GROUP BY e.item_id
ORDER BY e.item_id
