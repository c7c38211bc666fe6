-- ctr_by_position: observed click rate and mean true click probability per slate position.
-- inputs:  raw.exposures, raw.clicks, truth.exposures
-- outputs: position, exposures, ctr, mean_p_click
-- params:  none
SELECT e.position,
       count(*) AS exposures,
       round(avg(CASE WHEN c.item_id IS NULL THEN 0.0 ELSE 1.0 END), 4) AS ctr,
       round(avg(t.p_click), 4) AS mean_p_click
FROM raw.exposures e
LEFT JOIN raw.clicks c
  ON c.request_id = e.request_id AND c.user_id = e.user_id AND c.item_id = e.item_id
JOIN truth.exposures t
  ON t.request_id = e.request_id AND t.user_id = e.user_id AND t.item_id = e.item_id
GROUP BY e.position
ORDER BY e.position
