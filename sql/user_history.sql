-- user_history: each user's most recent T behaviors as of the end of the day — the compact state
--   that behavior sequences are built from, so a daily run never rescans raw history.
-- inputs:  previous_history (the state at the end of the previous day; empty on the first day),
--          behaviors (this day's accepted rows)
-- outputs: user_id, event_time, item_id, behavior (at most T rows per user, each user's newest
--          first: the order the window already produced, so nothing is sorted twice)
-- params:  $1 = T (the sequence length)
WITH all_events AS (
  SELECT user_id, event_time, item_id, behavior FROM previous_history
  UNION ALL
  SELECT user_id, event_time, item_id, behavior FROM behaviors
),
ranked AS (
  SELECT *, row_number() OVER (PARTITION BY user_id ORDER BY event_time DESC, item_id DESC, behavior DESC) AS recency
  FROM all_events
)
SELECT user_id, event_time, item_id, behavior
FROM ranked
WHERE recency <= $1
ORDER BY user_id, event_time DESC, item_id DESC, behavior DESC
