"""The daily feature job of `marnflow features`, written plainly in DuckDB: the peer a data
engineer would pick instead, for `ops/bench-peers.sh features`.

It does the same work over the same lake, day by day: the raw logs validated by the same
contract (rows that break it are written to quarantine/), labels, per-item daily counts, the
1/7/30-day windows as of the day before, their 10- and 100-bucket discretisation over the
catalogue, point-in-time behavior histories of length T, the samples join, the item content
(stored once per change), the item side table, the user state and the id dictionaries, each
written as Parquet. `ops/peers/check_features.py`
checks its labels, histories and buckets equal to marnflow's.

    python ops/peers/features_duckdb.py --lake LAKE --out OUT --from 2026-01-01 --to 2026-01-14
        [--threads 2] [--sequence-length 50] [--windows 1,7,30] [--max-id-bytes 256]
"""

import argparse
import datetime as dt
import os
import sys
import time

import duckdb

STATS = ["exposures", "clicks", "carts", "purchases", "amount"]


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lake", required=True, help="a marnflow lake with raw/ (read only)")
    p.add_argument("--out", required=True, help="where the peer writes its tables")
    p.add_argument("--from", dest="first", required=True, type=dt.date.fromisoformat)
    p.add_argument("--to", dest="last", required=True, type=dt.date.fromisoformat)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--sequence-length", type=int, default=50)
    p.add_argument("--windows", default="1,7,30")
    p.add_argument("--max-id-bytes", type=int, default=256)
    p.add_argument("--ctr-prior-clicks", type=float, default=1.0)
    p.add_argument("--ctr-prior-exposures", type=float, default=20.0)
    return p.parse_args()


def id_checks(prefix, ids, max_bytes):
    """The contract's id rules as CASE arms, in marnflow's order."""
    empty = [f"WHEN {prefix}{c} IS NULL OR trim(CAST({prefix}{c} AS VARCHAR)) = '' THEN 'empty {c}'" for c in ids]
    long = [
        f"WHEN strlen(CAST({prefix}{c} AS VARCHAR)) > {max_bytes} THEN '{c} longer than {max_bytes} bytes'"
        for c in ids
    ]
    return "\n".join(empty + long)


def time_checks(prefix, day):
    return f"""
    WHEN try_cast({prefix}event_time AS TIMESTAMP) IS NULL THEN 'missing or unparsable event_time'
    WHEN CAST(try_cast({prefix}event_time AS TIMESTAMP) AS DATE) <> DATE '{day}' THEN 'event_time outside its dt partition'"""


class Job:
    def __init__(self, args):
        self.args = args
        self.windows = [int(w) for w in args.windows.split(",")]
        self.out = args.out
        os.makedirs(self.out, exist_ok=True)
        self.db = duckdb.connect()
        self.db.execute(f"SET threads = {args.threads}")
        self.db.execute("SET preserve_insertion_order = false")
        self.db.execute("SET TimeZone = 'UTC'")
        raw = os.path.join(args.lake, "raw")
        for table in ["exposures", "clicks", "behaviors"]:
            self.db.execute(
                f"CREATE VIEW raw_{table} AS SELECT * FROM read_parquet('{raw}/{table}/*/*.parquet', "
                f"hive_partitioning = true)"
            )
        # The catalogue: one row per id (the first of repeats; an empty or over-long id is
        # quarantined, as marnflow does).
        self.db.execute(
            f"""CREATE TABLE catalogue_all AS
            SELECT *, CASE
                WHEN item_id IS NULL OR trim(item_id) = '' THEN 'empty item_id'
                WHEN strlen(item_id) > {args.max_id_bytes} THEN 'item_id longer than {args.max_id_bytes} bytes'
                WHEN row_number() OVER (PARTITION BY item_id ORDER BY item_id) > 1 THEN 'repeated item_id'
              END AS reason
            FROM read_parquet('{raw}/items/*.parquet')"""
        )
        self.db.execute(
            "CREATE TABLE catalogue AS SELECT * EXCLUDE (reason), "
            "hash(shop_id, brand_id, category_id, title, price, image_embedding) AS digest "
            "FROM catalogue_all WHERE reason IS NULL"
        )
        self.db.execute("CREATE TABLE content_state (item_id VARCHAR, content_dt VARCHAR, content_digest VARCHAR)")
        self.quarantine("items", args.first, "catalogue_all")
        self.db.execute(
            "CREATE TABLE item_ids AS SELECT item_id, shop_id, brand_id, category_id, price FROM catalogue"
        )
        self.db.execute(
            "CREATE TABLE daily_counts (dt DATE, item_id VARCHAR, exposures BIGINT, clicks BIGINT, carts BIGINT, "
            "purchases BIGINT, amount_cents BIGINT)"
        )
        self.db.execute(
            "CREATE TABLE history (user_id VARCHAR, event_time TIMESTAMP WITH TIME ZONE, item_id VARCHAR, "
            "behavior VARCHAR)"
        )
        for name in ["item", "shop", "brand", "category", "user", "token"]:
            self.db.execute(f"CREATE TABLE dict_{name} (value VARCHAR, idx BIGINT)")

    def sql(self, name, query):
        t = time.monotonic()
        result = self.db.execute(query)
        self.steps.append(f"{name}={(time.monotonic() - t) * 1e3:.0f}ms")
        return result

    def write(self, table, day, query):
        folder = os.path.join(self.out, "features", table, f"dt={day}")
        os.makedirs(folder, exist_ok=True)
        self.sql(f"write_{table}", f"COPY ({query}) TO '{folder}/part-00000.parquet' (FORMAT parquet, COMPRESSION zstd)")

    def quarantine(self, table, day, relation):
        bad = self.db.execute(f"SELECT count(*) FROM {relation} WHERE reason IS NOT NULL").fetchone()[0]
        if bad:
            folder = os.path.join(self.out, "quarantine", f"raw_{table}", f"dt={day}")
            os.makedirs(folder, exist_ok=True)
            self.db.execute(
                f"COPY (SELECT * FROM {relation} WHERE reason IS NOT NULL) TO '{folder}/part-00000.parquet' "
                f"(FORMAT parquet, COMPRESSION zstd)"
            )
        return bad

    def validate(self, day):
        a = self.args
        self.db.execute(
            f"""CREATE OR REPLACE TEMP TABLE v_exposures AS
            SELECT CAST(try_cast(event_time AS TIMESTAMP) AS TIMESTAMP WITH TIME ZONE) AS event_time,
                   CAST(request_id AS VARCHAR) AS request_id, CAST(user_id AS VARCHAR) AS user_id,
                   CAST(item_id AS VARCHAR) AS item_id, try_cast(position AS INT) AS position,
                   CASE {time_checks('', day)}
                   {id_checks('', ['request_id', 'user_id', 'item_id'], a.max_id_bytes)}
                   WHEN position IS NOT NULL AND try_cast(position AS INT) IS NULL THEN 'unparsable position'
                   END AS reason
            FROM raw_exposures WHERE dt = '{day}'"""
        )
        self.db.execute(
            "CREATE OR REPLACE TEMP TABLE exposures AS SELECT * EXCLUDE (reason) FROM v_exposures WHERE reason IS NULL"
        )
        self.db.execute(
            f"""CREATE OR REPLACE TEMP TABLE v_clicks AS
            SELECT CAST(try_cast(c.event_time AS TIMESTAMP) AS TIMESTAMP WITH TIME ZONE) AS event_time,
                   CAST(c.request_id AS VARCHAR) AS request_id, CAST(c.user_id AS VARCHAR) AS user_id,
                   CAST(c.item_id AS VARCHAR) AS item_id,
                   CASE {time_checks('c.', day)}
                   {id_checks('c.', ['request_id', 'user_id', 'item_id'], a.max_id_bytes)}
                   WHEN e.request_id IS NULL THEN 'click with no matching exposure'
                   END AS reason
            FROM raw_clicks c
            LEFT JOIN (SELECT DISTINCT request_id, user_id, item_id FROM exposures) e
              ON e.request_id = CAST(c.request_id AS VARCHAR) AND e.user_id = CAST(c.user_id AS VARCHAR)
             AND e.item_id = CAST(c.item_id AS VARCHAR)
            WHERE c.dt = '{day}'"""
        )
        self.db.execute(
            "CREATE OR REPLACE TEMP TABLE clicks AS SELECT * EXCLUDE (reason) FROM v_clicks WHERE reason IS NULL"
        )
        self.db.execute(
            f"""CREATE OR REPLACE TEMP TABLE v_behaviors AS
            SELECT CAST(try_cast(event_time AS TIMESTAMP) AS TIMESTAMP WITH TIME ZONE) AS event_time,
                   CAST(user_id AS VARCHAR) AS user_id, CAST(item_id AS VARCHAR) AS item_id,
                   CAST(behavior AS VARCHAR) AS behavior,
                   CASE {time_checks('', day)}
                   {id_checks('', ['user_id', 'item_id'], a.max_id_bytes)}
                   WHEN behavior IS NULL OR behavior NOT IN ('click', 'cart', 'purchase') THEN 'unknown behavior'
                   END AS reason
            FROM raw_behaviors WHERE dt = '{day}'"""
        )
        self.db.execute(
            "CREATE OR REPLACE TEMP TABLE behaviors AS SELECT * EXCLUDE (reason) FROM v_behaviors WHERE reason IS NULL"
        )
        for table in ["exposures", "clicks", "behaviors"]:
            self.quarantine(table, day, f"v_{table}")

    def counts_and_labels(self, day):
        self.db.execute(
            f"""INSERT INTO daily_counts
            SELECT DATE '{day}', e.item_id, sum(e.x), sum(e.c), sum(e.k), sum(e.p),
                   CAST(round(coalesce(sum(e.p * i.price), 0) * 100) AS BIGINT)
            FROM (SELECT item_id, 1 AS x, 0 AS c, 0 AS k, 0 AS p FROM exposures
                  UNION ALL SELECT item_id, 0, 1, 0, 0 FROM clicks
                  UNION ALL SELECT item_id, 0, 0, 1, 0 FROM behaviors WHERE behavior = 'cart'
                  UNION ALL SELECT item_id, 0, 0, 0, 1 FROM behaviors WHERE behavior = 'purchase') e
            LEFT JOIN item_ids i USING (item_id)
            GROUP BY e.item_id"""
        )
        self.write(
            "daily_item_counts",
            day,
            f"SELECT item_id, exposures, clicks, carts, purchases, amount_cents / 100.0 AS amount "
            f"FROM daily_counts WHERE dt = DATE '{day}' ORDER BY item_id",
        )
        self.db.execute(
            """CREATE OR REPLACE TEMP TABLE labels AS
            SELECT e.request_id, e.user_id, e.item_id, e.event_time, e.position,
                   CAST(CASE WHEN c.request_id IS NULL THEN 0 ELSE 1 END AS TINYINT) AS label
            FROM exposures e
            LEFT JOIN (SELECT DISTINCT request_id, user_id, item_id FROM clicks) c
              USING (request_id, user_id, item_id)"""
        )
        self.write("labels", day, "SELECT * FROM labels ORDER BY event_time, request_id, position, item_id")

    def stats_and_buckets(self, day):
        a = self.args
        sums = ", ".join(
            f"sum(CASE WHEN dt >= DATE '{day}' - INTERVAL {w} DAY THEN {s if s != 'amount' else 'amount_cents'} "
            f"ELSE 0 END) AS {s}_{w}d"
            for w in self.windows
            for s in STATS
        )
        longest = max(self.windows)
        self.db.execute(
            f"""CREATE OR REPLACE TEMP TABLE item_stats AS
            SELECT item_id, {sums} FROM daily_counts
            WHERE dt >= DATE '{day}' - INTERVAL {longest} DAY AND dt < DATE '{day}'
            GROUP BY item_id"""
        )
        prior = a.ctr_prior_clicks / a.ctr_prior_exposures
        columns = []
        for w in self.windows:
            for s in STATS:
                value = f"{s}_{w}d / 100.0" if s == "amount" else f"{s}_{w}d"
                columns.append((f"{s}_{w}d", f"CAST({value} AS DOUBLE)", "0.0"))
        for w in self.windows:
            value = f"(clicks_{w}d + {a.ctr_prior_clicks}) / (exposures_{w}d + {a.ctr_prior_exposures})"
            columns.append((f"ctr_{w}d", f"CAST({value} AS DOUBLE)", repr(prior)))
        self.write(
            "item_stats", day, "SELECT item_id, " + ", ".join(f"{v} AS {n}" for n, v, _ in columns) + " FROM item_stats"
        )
        buckets = ", ".join(
            f"""CAST(least(9, floor(percent_rank() OVER (ORDER BY coalesce({v}, {e})) * 10)) AS INT) AS {n}_b10,
                CAST(least(99, floor(percent_rank() OVER (ORDER BY coalesce({v}, {e})) * 100)) AS INT) AS {n}_b100"""
            for n, v, e in columns
        )
        self.db.execute(
            f"""CREATE OR REPLACE TEMP TABLE buckets AS
            SELECT c.item_id, {buckets}
            FROM (SELECT DISTINCT item_id FROM catalogue) c LEFT JOIN item_stats s USING (item_id)"""
        )
        self.write("item_stat_buckets", day, "SELECT * FROM buckets ORDER BY item_id")

    def samples_and_state(self, day):
        t = self.args.sequence_length
        self.db.execute(
            """CREATE OR REPLACE TEMP TABLE candidate_events AS
            SELECT user_id, event_time, item_id, behavior FROM history
            UNION ALL SELECT user_id, event_time, item_id, behavior FROM behaviors"""
        )
        self.sql(
            "sequences",
            f"""CREATE OR REPLACE TEMP TABLE sequences AS
            WITH history AS (
              SELECT l.user_id, l.event_time AS exposure_time, b.event_time, b.item_id, b.behavior,
                     row_number() OVER (PARTITION BY l.user_id, l.event_time
                                        ORDER BY b.event_time DESC, b.item_id DESC, b.behavior DESC) AS recency
              FROM (SELECT DISTINCT user_id, event_time FROM labels) l
              JOIN candidate_events b ON b.user_id = l.user_id AND b.event_time < l.event_time
            )
            SELECT user_id, exposure_time,
                   list(item_id ORDER BY recency DESC) AS hist_item_ids,
                   list(behavior ORDER BY recency DESC) AS hist_behaviors,
                   list(CAST((epoch_ms(exposure_time) - epoch_ms(event_time)) // 1000 AS BIGINT)
                        ORDER BY recency DESC) AS hist_seconds_before
            FROM history WHERE recency <= {t}
            GROUP BY user_id, exposure_time"""
        )
        self.sql(
            "samples",
            """CREATE OR REPLACE TEMP VIEW samples AS
            SELECT l.request_id, l.user_id, l.item_id, l.event_time, l.label,
                   i.shop_id, i.brand_id, i.category_id, k.* EXCLUDE (item_id),
                   coalesce(s.hist_item_ids, []) AS hist_item_ids,
                   coalesce(s.hist_behaviors, []) AS hist_behaviors,
                   coalesce(s.hist_seconds_before, CAST([] AS BIGINT[])) AS hist_seconds_before
            FROM labels l
            LEFT JOIN item_ids i ON i.item_id = l.item_id
            LEFT JOIN buckets k ON k.item_id = l.item_id
            LEFT JOIN sequences s ON s.user_id = l.user_id AND s.exposure_time = l.event_time"""
        )
        self.write("samples", day, "SELECT * FROM samples ORDER BY event_time, request_id, item_id")
        self.sql(
            "history",
            f"""CREATE OR REPLACE TABLE history AS
            SELECT user_id, event_time, item_id, behavior FROM candidate_events
            QUALIFY row_number() OVER (PARTITION BY user_id
                                       ORDER BY event_time DESC, item_id DESC, behavior DESC) <= {t}"""
        )
        self.write("user_history", day, "SELECT * FROM history ORDER BY user_id, event_time, item_id, behavior")
        # The item content (ids, title tokens, image, price) stored once per change: the day's
        # partition holds the items that are new or whose content digest changed; the day's item
        # table holds every item's buckets and the day its content was stored (content_dt).
        self.db.execute(
            f"""CREATE OR REPLACE TEMP TABLE items AS
            SELECT c.item_id, c.shop_id, c.brand_id, c.category_id,
                   string_split(lower(trim(c.title)), ' ') AS title_tokens, c.image_embedding, c.price,
                   CAST(c.digest AS VARCHAR) AS content_digest,
                   CASE WHEN p.content_digest = CAST(c.digest AS VARCHAR) THEN p.content_dt
                        ELSE '{day}' END AS content_dt
            FROM catalogue c LEFT JOIN content_state p USING (item_id)"""
        )
        self.write(
            "item_content",
            day,
            "SELECT item_id, shop_id, brand_id, category_id, title_tokens, image_embedding, price FROM items "
            f"WHERE content_dt = '{day}' ORDER BY item_id",
        )
        self.write(
            "items",
            day,
            "SELECT i.item_id, i.content_dt, i.content_digest, k.* EXCLUDE (item_id) "
            "FROM items i LEFT JOIN buckets k USING (item_id) ORDER BY i.item_id",
        )
        self.db.execute(
            "CREATE OR REPLACE TABLE content_state AS SELECT item_id, content_dt, content_digest FROM items"
        )

    def dictionaries(self):
        # The ids the day's samples and item table hold (the histories' items are those of the
        # day's sequences), appended in value order after the largest index.
        sources = {
            "item": "SELECT item_id AS value FROM labels UNION ALL SELECT unnest(hist_item_ids) FROM sequences "
            "UNION ALL SELECT item_id FROM catalogue",
            "shop": "SELECT shop_id AS value FROM catalogue",
            "brand": "SELECT brand_id AS value FROM catalogue",
            "category": "SELECT category_id AS value FROM catalogue",
            "user": "SELECT user_id AS value FROM labels",
            "token": f"SELECT unnest(title_tokens) AS value FROM items WHERE content_dt = '{self.day}'",
        }
        for name, values in sources.items():
            new = self.db.execute(
                f"""INSERT INTO dict_{name}
                SELECT value, (SELECT coalesce(max(idx), 1) FROM dict_{name}) + row_number() OVER (ORDER BY value)
                FROM (SELECT DISTINCT value FROM ({values}) WHERE value IS NOT NULL
                      EXCEPT SELECT value FROM dict_{name})"""
            ).fetchone()[0]
            if new:
                folder = os.path.join(self.out, "features", "dictionaries")
                os.makedirs(folder, exist_ok=True)
                self.db.execute(
                    f"COPY (SELECT value, idx AS index FROM dict_{name} ORDER BY idx) TO '{folder}/{name}.parquet' "
                    f"(FORMAT parquet, COMPRESSION zstd)"
                )

    def run(self):
        day = self.args.first
        while day <= self.args.last:
            self.steps = []
            self.day = day
            t = time.monotonic()
            self.validate(day)
            self.counts_and_labels(day)
            self.stats_and_buckets(day)
            self.samples_and_state(day)
            self.dictionaries()
            print(f"duckdb peer: {day} {time.monotonic() - t:.2f} s: {' '.join(self.steps)}", file=sys.stderr)
            day += dt.timedelta(days=1)


def main():
    args = parse_args()
    if args.last < args.first:
        sys.exit(f"--to {args.last} is before --from {args.first}")
    Job(args).run()


if __name__ == "__main__":
    main()
