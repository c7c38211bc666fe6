-- labels: every exposure of the day, left-joined with the day's clicks → label 0/1. A click
--   counts when it comes at most $1 seconds after the exposure (features.label_window_seconds;
--   0: any click of the day).
-- inputs:  exposures, clicks (this day's accepted rows)
-- outputs: request_id, user_id, item_id, event_time, position, label (int8)
-- params:  $1 = the label window in seconds (0: the whole day)
SELECT
  e.request_id,
  e.user_id,
  e.item_id,
  e.event_time,
  e.position,
  CAST(CASE
    WHEN c.request_id IS NULL THEN 0
    WHEN $1 > 0 AND CAST(c.first_click AS BIGINT) > CAST(e.event_time AS BIGINT) + $1 * 1000 THEN 0
    ELSE 1
  END AS TINYINT) AS label
FROM exposures e
LEFT JOIN (SELECT request_id, user_id, item_id, min(event_time) AS first_click FROM clicks GROUP BY request_id, user_id, item_id) c
  ON c.request_id = e.request_id AND c.user_id = e.user_id AND c.item_id = e.item_id
ORDER BY e.event_time, e.request_id, e.position, e.item_id
