"""dlt's side of scripts/bench/dlt-compare.sh: canonical.db (SQLite) -> Postgres.

  default: a Python generator of dicts over the SQLite rows, the JSON
           columns as jsonb (data_type json), write_disposition merge on
           contact_id (dlt's documented default for an upsertable table).
  fastest: dlt.sources.sql_database.sql_table with the pyarrow backend,
           loaded with COPY (loader_file_format csv), write_disposition
           replace.
Usage: python dlt_load.py default|fastest CANONICAL_DB POSTGRES_URL WORKDIR
"""
import json
import sqlite3
import sys

import dlt

JSON_COLS = [
    "external_ids", "tags", "emails", "phones", "llm_context", "relationships",
    "communication_stats", "social_profiles", "custom_attributes",
]


def main():
    mode, db, url, work = sys.argv[1:5]
    pipeline = dlt.pipeline(
        pipeline_name=f"cmp_{mode}",
        pipelines_dir=work,
        destination=dlt.destinations.postgres(credentials=url),
        dataset_name="dlt_contacts",
        progress="log" if False else None,
    )
    if mode == "default":
        @dlt.resource(
            name="contacts",
            write_disposition="merge",
            primary_key="contact_id",
            columns={c: {"data_type": "json"} for c in JSON_COLS},
        )
        def contacts():
            con = sqlite3.connect(db)
            con.row_factory = sqlite3.Row
            cols = None
            for row in con.execute("SELECT * FROM contacts"):
                d = dict(row)
                if cols is None:
                    cols = [c for c in JSON_COLS if c in d]
                for c in cols:
                    if d[c] is not None:
                        d[c] = json.loads(d[c])
                d.pop("id", None)
                yield d

        info = pipeline.run(contacts())
    elif mode == "fastest":
        from dlt.sources.sql_database import sql_table

        table = sql_table(credentials=f"sqlite:///{db}", table="contacts", backend="pyarrow")
        info = pipeline.run(table, write_disposition="replace", loader_file_format="csv")
    else:
        raise SystemExit(f"unknown mode {mode}")
    if info.has_failed_jobs:
        raise SystemExit(f"dlt load failed: {info}")


if __name__ == "__main__":
    main()
