-- labels: every exposure of the day, left-joined with the day's clicks → label 0/1.
-- inputs:  exposures, clicks (this day's accepted rows)
-- outputs: request_id, user_id, item_id, event_time, position, label (int8)
-- params:  none
SELECT
  e.request_id,
  e.user_id,
  e.item_id,
  e.event_time,
  e.position,
  CAST(CASE WHEN c.request_id IS NULL THEN 0 ELSE 1 END AS TINYINT) AS label
FROM exposures e
LEFT JOIN (SELECT DISTINCT request_id, user_id, item_id FROM clicks) c
  ON c.request_id = e.request_id AND c.user_id = e.user_id AND c.item_id = e.item_id
ORDER BY e.event_time, e.request_id, e.position, e.item_id
