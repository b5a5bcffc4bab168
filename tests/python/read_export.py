"""Reads Axle's exported Parquet files with pyarrow and with DuckDB and prints what each saw as
one JSON line, for tests/tests/export.rs to compare with the log.

usage: read_export.py ROOT STREAM full|count
  full:  every row (pyarrow and DuckDB), the column types each reports, file-level metadata
  count: rows, distinct (partition, offset) pairs and per-partition min/max/count (DuckDB)
"""
import glob
import json
import os
import sys

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq


def plain(table):
    """Rows as JSON-friendly dicts: timestamps as ms integers, binary as hex."""
    cols = {}
    for name in table.column_names:
        col = table.column(name)
        if pa.types.is_timestamp(col.type):
            col = col.cast(pa.int64())
        if pa.types.is_binary(col.type):
            cols[name] = [None if v is None else v.hex() for v in col.to_pylist()]
        else:
            cols[name] = col.to_pylist()
    n = table.num_rows
    return [{k: v[i] for k, v in cols.items()} for i in range(n)]


def main():
    root, stream, mode = sys.argv[1], sys.argv[2], sys.argv[3]
    pattern = os.path.join(root, stream, "date=*", "hour=*", "*.parquet")
    files = sorted(glob.glob(pattern))
    con = duckdb.connect()
    # DuckDB keeps a Hive value with a leading zero ("hour=07") as VARCHAR, since casting it
    # would not round-trip; the types are therefore given, as a data team would.
    src = (f"read_parquet('{os.path.join(root, stream)}/**/*.parquet', hive_partitioning = true, "
           "hive_types = {'date': DATE, 'hour': INTEGER})")
    if mode == "count":
        total, distinct = con.execute(f'SELECT count(*), count(DISTINCT (partition, "offset")) FROM {src}').fetchone()
        parts = con.execute(
            f'SELECT partition, min("offset"), max("offset"), count(*) FROM {src} GROUP BY partition ORDER BY partition'
        ).fetchall()
        print(json.dumps({"files": len(files), "rows": total, "distinct": distinct,
                          "partitions": [list(p) for p in parts]}))
        return

    out = {"files": [os.path.relpath(f, root) for f in files]}
    tables = [pq.read_table(f) for f in files]
    table = pa.concat_tables(tables)
    meta = [pq.ParquetFile(f).metadata for f in files]
    out["pyarrow"] = {
        "types": {f.name: str(f.type) for f in table.schema},
        "nullable": {f.name: f.nullable for f in table.schema},
        "rows": plain(table),
        "compression": sorted({meta_rg.column(i).compression
                               for m in meta for r in range(m.num_row_groups)
                               for meta_rg in [m.row_group(r)] for i in range(meta_rg.num_columns)}),
        "statistics": all(m.row_group(r).column(i).is_stats_set
                          for m in meta for r in range(m.num_row_groups)
                          for i in range(m.row_group(r).num_columns)
                          if m.row_group(r).column(i).path_in_schema in ("ts", "offset", "speed")),
    }
    types = {r[0]: r[1] for r in con.execute(f"DESCRIBE SELECT * FROM {src}").fetchall()}
    cols = [c for c in types if c not in ("payload", "user_properties")]
    exprs = ", ".join('epoch_ms("ts")' if c == "ts" else f'"{c}"' for c in cols)
    rows = con.execute(f'SELECT {exprs}, hex(payload) FROM {src} ORDER BY partition, "offset"').fetchall()
    out["duckdb"] = {
        "types": types,
        "rows": [dict(zip(cols + ["payload"], [v.lower() if k == len(cols) else v for k, v in enumerate(r)]))
                 for r in rows],
    }
    print(json.dumps(out, default=str))


if __name__ == "__main__":
    main()
