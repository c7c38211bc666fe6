-- clean_exposures: one day of raw exposures, each row with the reason it breaks the contract
--   (reason IS NULL: the row is accepted; otherwise it goes to quarantine/raw_exposures/dt=D/).
-- inputs:  raw.exposures (partition dt = $1)
-- outputs: event_time timestamp(ms, UTC), request_id, user_id, item_id, position int32, raw_event_time, reason
-- params:  $1 = the day (YYYY-MM-DD), $2 = the longest id in bytes (features.max_id_bytes)
-- An id is at most $2 bytes (the contract's bound: a longer one would swell every dictionary,
-- history and sample it reaches).
SELECT
  arrow_cast(try_cast(event_time AS TIMESTAMP), 'Timestamp(ms, "UTC")') AS event_time,
  CAST(request_id AS VARCHAR) AS request_id,
  CAST(user_id AS VARCHAR) AS user_id,
  CAST(item_id AS VARCHAR) AS item_id,
  try_cast(position AS INT) AS position,
  CAST(event_time AS VARCHAR) AS raw_event_time,
  CASE
    WHEN try_cast(event_time AS TIMESTAMP) IS NULL THEN 'missing or unparsable event_time'
    WHEN CAST(try_cast(event_time AS TIMESTAMP) AS DATE) <> CAST($1 AS DATE) THEN 'event_time outside its dt partition'
    WHEN request_id IS NULL OR trim(CAST(request_id AS VARCHAR)) = '' THEN 'empty request_id'
    WHEN user_id IS NULL OR trim(CAST(user_id AS VARCHAR)) = '' THEN 'empty user_id'
    WHEN item_id IS NULL OR trim(CAST(item_id AS VARCHAR)) = '' THEN 'empty item_id'
    WHEN octet_length(CAST(request_id AS VARCHAR)) > $2 THEN 'request_id longer than ' || CAST($2 AS VARCHAR) || ' bytes'
    WHEN octet_length(CAST(user_id AS VARCHAR)) > $2 THEN 'user_id longer than ' || CAST($2 AS VARCHAR) || ' bytes'
    WHEN octet_length(CAST(item_id AS VARCHAR)) > $2 THEN 'item_id longer than ' || CAST($2 AS VARCHAR) || ' bytes'
    WHEN position IS NOT NULL AND try_cast(position AS INT) IS NULL THEN 'unparsable position'
  END AS reason
FROM raw.exposures
WHERE dt = $1
