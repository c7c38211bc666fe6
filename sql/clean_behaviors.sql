-- clean_behaviors: one day of raw behaviors with the reason each bad row breaks the contract.
-- inputs:  raw.behaviors (dt = $1)
-- outputs: event_time, user_id, item_id, behavior, raw_event_time, reason
-- params:  $1 = the day (YYYY-MM-DD), $2 = the longest id in bytes (features.max_id_bytes)
SELECT
  arrow_cast(try_cast(event_time AS TIMESTAMP), 'Timestamp(ms, "UTC")') AS event_time,
  CAST(user_id AS VARCHAR) AS user_id,
  CAST(item_id AS VARCHAR) AS item_id,
  CAST(behavior AS VARCHAR) AS behavior,
  CAST(event_time AS VARCHAR) AS raw_event_time,
  CASE
    WHEN try_cast(event_time AS TIMESTAMP) IS NULL THEN 'missing or unparsable event_time'
    WHEN CAST(try_cast(event_time AS TIMESTAMP) AS DATE) <> CAST($1 AS DATE) THEN 'event_time outside its dt partition'
    WHEN user_id IS NULL OR trim(CAST(user_id AS VARCHAR)) = '' THEN 'empty user_id'
    WHEN item_id IS NULL OR trim(CAST(item_id AS VARCHAR)) = '' THEN 'empty item_id'
    WHEN octet_length(CAST(user_id AS VARCHAR)) > $2 THEN 'user_id longer than ' || CAST($2 AS VARCHAR) || ' bytes'
    WHEN octet_length(CAST(item_id AS VARCHAR)) > $2 THEN 'item_id longer than ' || CAST($2 AS VARCHAR) || ' bytes'
    WHEN behavior IS NULL OR CAST(behavior AS VARCHAR) NOT IN ('click', 'cart', 'purchase') THEN 'unknown behavior'
  END AS reason
FROM raw.behaviors
WHERE dt = $1
