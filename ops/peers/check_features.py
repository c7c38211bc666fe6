"""Checks the DuckDB peer's feature tables equal to marnflow's on the same lake: every day's
labels, behavior histories (item ids, behavior types and seconds before, per sample), stat
buckets, user state, the item content stored on each day and the item tables' pointers to it,
and the dictionaries. Prints one line per table and exits 1 on any difference.

    python ops/peers/check_features.py --marnflow LAKE --peer OUT
"""

import argparse
import sys

import duckdb

# table -> (key columns, compared columns or None for all but dt)
TABLES = {
    "labels": (["request_id", "item_id"], ["user_id", "event_time", "position", "label"]),
    "samples": (["request_id", "item_id"], ["label", "hist_item_ids", "hist_behaviors", "hist_seconds_before"]),
    "item_stat_buckets": (["item_id"], None),
    "user_history": (["user_id", "event_time", "item_id", "behavior"], []),
    # The content stored once per change, and where each day's item table points for it (the
    # content digest is each side's own hash, so it is not compared).
    "item_content": (["item_id"], None),
    "items": (["item_id"], None),
}
NOT_COMPARED = {"dt", "content_digest"}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--marnflow", required=True, help="the lake marnflow features wrote")
    p.add_argument("--peer", required=True, help="the folder the DuckDB peer wrote")
    args = p.parse_args()
    db = duckdb.connect()
    db.execute("SET TimeZone = 'UTC'")
    failed = False
    for table, (keys, columns) in TABLES.items():
        views = {}
        for side, root in [("m", args.marnflow), ("p", args.peer)]:
            db.execute(
                f"CREATE OR REPLACE VIEW {side} AS SELECT * FROM read_parquet('{root}/features/{table}/*/*.parquet', "
                f"hive_partitioning = true, union_by_name = true)"
            )
            views[side] = [r[0] for r in db.execute(f"DESCRIBE {side}").fetchall()]
        if columns is None:
            columns = [c for c in views["m"] if c not in keys and c not in NOT_COMPARED]
        missing = [c for c in keys + columns if c not in views["p"]]
        if missing:
            print(f"{table}: the peer lacks {missing}")
            failed = True
            continue
        cols = ", ".join(["dt"] + keys + columns)
        rows = db.execute("SELECT count(*) FROM m").fetchone()[0]
        only_m = db.execute(f"SELECT count(*) FROM (SELECT {cols} FROM m EXCEPT ALL SELECT {cols} FROM p)").fetchone()[0]
        only_p = db.execute(f"SELECT count(*) FROM (SELECT {cols} FROM p EXCEPT ALL SELECT {cols} FROM m)").fetchone()[0]
        ok = only_m == 0 and only_p == 0 and rows > 0
        failed |= not ok
        print(f"{table}: {rows} rows, {only_m} only in marnflow's, {only_p} only in the peer's: {'equal' if ok else 'DIFFERENT'}")
        if not ok and only_m:
            example = db.execute(f"SELECT {cols} FROM m EXCEPT ALL SELECT {cols} FROM p LIMIT 1").fetchone()
            print(f"  e.g. marnflow: {str(example)[:400]}")
    for name in ["item", "shop", "brand", "category", "user", "token"]:
        files = [f"{root}/features/dictionaries/{name}.parquet" for root in (args.marnflow, args.peer)]
        rows = db.execute(f"SELECT count(*) FROM read_parquet('{files[0]}')").fetchone()[0]
        differ = db.execute(
            f"SELECT count(*) FROM (SELECT * FROM read_parquet('{files[0]}') EXCEPT ALL SELECT * FROM read_parquet('{files[1]}'))"
        ).fetchone()[0]
        ok = differ == 0 and rows > 0
        failed |= not ok
        print(f"dictionary {name}: {rows} values, {differ} with another index in the peer's: {'equal' if ok else 'DIFFERENT'}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
