-- samples_per_day: the training samples the feature job built, per day: how many, the click
-- rate, how long the behavior sequences are, and how many items carry window statistics.
-- inputs:  features.samples, features.item_stats
-- outputs: dt, samples, ctr, mean_history, items_with_stats
-- params:  none
SELECT s.dt,
       count(*) AS samples,
       round(avg(CAST(s.label AS DOUBLE)), 4) AS ctr,
       round(avg(CAST(cardinality(s.hist_item_ids) AS DOUBLE)), 1) AS mean_history,
       coalesce(max(i.n), 0) AS items_with_stats
FROM features.samples s
LEFT JOIN (SELECT dt, count(*) AS n FROM features.item_stats GROUP BY dt) i ON i.dt = s.dt
GROUP BY s.dt
ORDER BY s.dt
