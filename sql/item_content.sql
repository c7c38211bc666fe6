-- item_content: the catalogue items whose content is new or changed on day D: ids, title tokens,
--   image embedding and price, stored once per change rather than copied every day. The content
--   of an item on day D is its row in item_content/dt=<content_dt>, content_dt from items/dt=D.
--   A day without changes gets an empty partition.
-- inputs:  raw.items (the checked catalogue), item_digests (item_id, content_digest: a 64-bit
--          hash of every content column, computed by the job), previous_items (item_id,
--          content_dt, content_digest of the day before; empty when there is none)
-- outputs: item_id, shop_id, brand_id, category_id, title_tokens (list of utf8),
--          image_embedding, price, sorted by item_id
-- params:  none
-- The changed ids first, then the catalogue rows they select: the images pass through no join.
WITH changed AS (
  SELECT d.item_id
  FROM item_digests d
  LEFT JOIN previous_items p ON p.item_id = d.item_id
  WHERE p.content_digest IS NULL OR p.content_digest <> d.content_digest
)
SELECT
  i.item_id, i.shop_id, i.brand_id, i.category_id,
  string_to_array(lower(trim(i.title)), ' ') AS title_tokens,
  i.image_embedding,
  i.price
FROM raw.items i
WHERE i.item_id IN (SELECT item_id FROM changed)
ORDER BY i.item_id
