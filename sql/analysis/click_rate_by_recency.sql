-- click_rate_by_recency: click rate of the samples by the time between the exposure and the
--   user's most recent behavior before it (what the behavior property's time bucket carries).
-- inputs:  features.samples
-- outputs: recency, samples, click_rate
-- params:  none
WITH last_gap AS (
  SELECT label,
         CASE WHEN array_length(hist_seconds_before) IS NULL THEN NULL
              ELSE hist_seconds_before[CAST(array_length(hist_seconds_before) AS BIGINT)] END AS seconds
  FROM features.samples
)
SELECT CASE WHEN seconds IS NULL THEN '0: no behavior'
            WHEN seconds < 60 THEN '1: < 1 min'
            WHEN seconds < 3600 THEN '2: 1 min - 1 h'
            WHEN seconds < 86400 THEN '3: 1 h - 1 day'
            ELSE '4: >= 1 day' END AS recency,
       count(*) AS samples,
       round(avg(CAST(label AS DOUBLE)), 3) AS click_rate
FROM last_gap
GROUP BY 1
ORDER BY 1
