-- clean_clicks: one day of raw clicks with the reason each bad row breaks the contract; a click
--   must match an exposure of the same day on (request_id, user_id, item_id).
-- inputs:  raw.clicks (dt = $1), clean_exposures (this day's accepted exposures)
-- outputs: event_time, request_id, user_id, item_id, raw_event_time, reason
-- params:  $1 = the day (YYYY-MM-DD), $2 = the longest id in bytes (features.max_id_bytes)
SELECT
  arrow_cast(try_cast(c.event_time AS TIMESTAMP), 'Timestamp(ms, "UTC")') AS event_time,
  CAST(c.request_id AS VARCHAR) AS request_id,
  CAST(c.user_id AS VARCHAR) AS user_id,
  CAST(c.item_id AS VARCHAR) AS item_id,
  CAST(c.event_time AS VARCHAR) AS raw_event_time,
  CASE
    WHEN try_cast(c.event_time AS TIMESTAMP) IS NULL THEN 'missing or unparsable event_time'
    WHEN CAST(try_cast(c.event_time AS TIMESTAMP) AS DATE) <> CAST($1 AS DATE) THEN 'event_time outside its dt partition'
    WHEN c.request_id IS NULL OR trim(CAST(c.request_id AS VARCHAR)) = '' THEN 'empty request_id'
    WHEN c.user_id IS NULL OR trim(CAST(c.user_id AS VARCHAR)) = '' THEN 'empty user_id'
    WHEN c.item_id IS NULL OR trim(CAST(c.item_id AS VARCHAR)) = '' THEN 'empty item_id'
    WHEN octet_length(CAST(c.request_id AS VARCHAR)) > $2 THEN 'request_id longer than ' || CAST($2 AS VARCHAR) || ' bytes'
    WHEN octet_length(CAST(c.user_id AS VARCHAR)) > $2 THEN 'user_id longer than ' || CAST($2 AS VARCHAR) || ' bytes'
    WHEN octet_length(CAST(c.item_id AS VARCHAR)) > $2 THEN 'item_id longer than ' || CAST($2 AS VARCHAR) || ' bytes'
    WHEN e.request_id IS NULL THEN 'click with no matching exposure'
  END AS reason
FROM raw.clicks c
LEFT JOIN (SELECT DISTINCT request_id, user_id, item_id FROM clean_exposures WHERE reason IS NULL) e
  ON e.request_id = CAST(c.request_id AS VARCHAR)
 AND e.user_id = CAST(c.user_id AS VARCHAR)
 AND e.item_id = CAST(c.item_id AS VARCHAR)
WHERE c.dt = $1
