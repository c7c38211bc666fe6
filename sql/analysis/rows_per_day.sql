-- rows_per_day: how many exposures, clicks and behaviors each day holds, and the click rate.
-- inputs:  raw.exposures, raw.clicks, raw.behaviors (partition column dt)
-- outputs: dt, exposures, clicks, behaviors, ctr
-- params:  none
SELECT e.dt,
       e.n AS exposures,
       c.n AS clicks,
       b.n AS behaviors,
       round(CAST(c.n AS DOUBLE) / e.n, 4) AS ctr
FROM (SELECT dt, count(*) AS n FROM raw.exposures GROUP BY dt) e
JOIN (SELECT dt, count(*) AS n FROM raw.clicks GROUP BY dt) c ON c.dt = e.dt
JOIN (SELECT dt, count(*) AS n FROM raw.behaviors GROUP BY dt) b ON b.dt = e.dt
ORDER BY e.dt
