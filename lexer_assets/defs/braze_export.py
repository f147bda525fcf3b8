"""Braze -> hub: request a segment export, notice it landed in the bucket, load it into DuckDB."""

import datetime as dt
import shutil
import time
from pathlib import Path

import dagster as dg

from lexer_assets.braze.client import BrazeError
from lexer_assets.braze.export_files import ExportFileError
from lexer_assets.braze.export_landing import copy_export, wait_for_export
from lexer_assets.braze.export_load import load_export
from lexer_assets.defs.policies import (
    DUCKDB_WRITER_POOL,
    numeric_metadata,
    preview_markdown,
    table_definition_metadata,
)
from lexer_assets.defs.resources import BrazeResource, BucketResource, PipelineResource, WarehouseResource
from lexer_assets.storage.catalog import BRAZE_USERS, EXPORT_FILES, EXPORT_REJECTS, EXPORT_REQUESTS


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


@dg.asset(
    key=["braze", "export_request"],
    group_name="braze_export",
    kinds={"braze"},
    pool=DUCKDB_WRITER_POOL,
)
def export_request(context: dg.AssetExecutionContext, braze: BrazeResource,
                   warehouse: WarehouseResource) -> dg.MaterializeResult:
    """Asks Braze (POST /users/export/segment) to export the configured segment to the brand's bucket.

    Records Braze's `object_prefix`, which names the export's folder in the bucket, in
    `braze.export_requests`. Braze answers at once; the files arrive later (see braze/segment_export).
    """
    try:
        answer = braze.client().export_segment(braze.export_segment_id, braze.export_fields)
    except BrazeError as exc:  # the message names the cause (wrong key, missing permission), never the key
        raise dg.Failure(description=f"Braze refused the export request: {exc}") from None
    object_prefix = answer["object_prefix"]
    wh = warehouse.get()
    with wh.transaction(tables=[EXPORT_REQUESTS.name]) as conn:
        conn.execute("INSERT INTO braze.export_requests VALUES (?, ?, ?, ?, ?)",
                     [object_prefix, braze.export_segment_id, _utcnow(), list(braze.export_fields), "zip"])
    context.log.info(f"Braze accepted the export of segment {braze.export_segment_id}: {object_prefix}")
    return dg.MaterializeResult(metadata={"object_prefix": object_prefix,
                                          "segment_id": braze.export_segment_id})


@dg.asset(
    key=["braze", "segment_export"],
    deps=[export_request],
    group_name="braze_export",
    kinds={"s3"},
    pool=DUCKDB_WRITER_POOL,
)
def segment_export(context: dg.AssetExecutionContext, bucket: BucketResource, braze: BrazeResource,
                   warehouse: WarehouseResource, pipeline: PipelineResource) -> dg.MaterializeResult:
    """The files of the newest requested export, landed in the bucket and copied into the hub's raw storage.

    Braze writes `[path/]segment-export/<segment_id>/<YYYY-MM-dd>/<object_prefix>/<32 hex>.zip|.gz` and no
    completion marker: the export counts as landed when its listing has not changed for the settle time. Files
    are copied under `$LEXER_HOME/raw/braze-exports/<date>/<object_prefix>/` (Braze deletes them within hours)
    and listed in `braze.export_files`.
    """
    wh = warehouse.get()
    with wh.connect() as conn:
        rows = conn.execute("SELECT object_prefix, segment_id FROM braze.export_requests "
                            "ORDER BY requested_at DESC LIMIT 1").fetchall()
    if not rows:
        raise dg.Failure("no export has been requested yet: materialise braze/export_request first")
    object_prefix, segment_id = rows[0]
    store = bucket.store()
    started = time.monotonic()
    landed = wait_for_export(
        store, path_prefix=bucket.path_prefix, segment_id=segment_id, object_prefix=object_prefix,
        settle_seconds=pipeline.export_settle_seconds, timeout_seconds=pipeline.export_timeout_seconds,
    )
    if landed.is_empty:
        context.log.warning(f"export {object_prefix} wrote no files after {pipeline.export_timeout_seconds} s; "
                            "treated as an empty export (braze/users keeps the previous data)")
        return dg.MaterializeResult(metadata={"object_prefix": object_prefix, "files": 0, "bytes": 0,
                                              "empty_export": True})
    copied = copy_export(store, landed, pipeline.raw_exports_dir)
    home = Path(pipeline.home)
    with wh.transaction(tables=[EXPORT_FILES.name]) as conn:
        conn.execute("DELETE FROM braze.export_files WHERE object_prefix = ?", [object_prefix])
        now = _utcnow()
        for obj, path in zip(landed.files, copied, strict=True):
            conn.execute("INSERT INTO braze.export_files VALUES (?, ?, ?, ?, ?, ?)",
                         [object_prefix, landed.export_date, obj.key, str(path.relative_to(home)), obj.size, now])
    wh.publish([EXPORT_FILES.name])
    return dg.MaterializeResult(metadata={
        "object_prefix": object_prefix,
        "export_date": str(landed.export_date),
        "source": store.describe(),
        **numeric_metadata({"files": len(landed.files), "bytes": landed.bytes,
                            # Braze writes about 5,000 users per file
                            "users_estimate": len(landed.files) * 5000,
                            "seconds_waited": round(time.monotonic() - started, 1)}),
    })


@dg.asset(
    key=["braze", "users"],
    deps=[segment_export],
    group_name="braze_export",
    kinds={"duckdb"},
    pool=DUCKDB_WRITER_POOL,
    metadata=table_definition_metadata(BRAZE_USERS),
)
def users(context: dg.AssetExecutionContext, warehouse: WarehouseResource,
          pipeline: PipelineResource) -> dg.MaterializeResult:
    """`braze.users`: one row per Braze user of the newest landed export, duplicates collapsed.

    Lines that cannot be loaded (invalid JSON, not an object, no identifier, too long) go to
    `braze.export_rejects` with file, line and reason; the rest loads. Reloading the same export is idempotent.
    An empty export never replaces loaded users.
    """
    wh = warehouse.get()
    with wh.connect() as conn:
        newest = conn.execute(
            "SELECT object_prefix FROM braze.export_files GROUP BY object_prefix "
            "ORDER BY max(landed_at) DESC LIMIT 1").fetchall()
        if not newest:
            raise dg.Failure("no export has landed yet: materialise braze/segment_export first")
        object_prefix = newest[0][0]
        raw = [r[0] for r in conn.execute("SELECT raw_path FROM braze.export_files WHERE object_prefix = ? "
                                          "ORDER BY bucket_key", [object_prefix]).fetchall()]
    home = Path(pipeline.home)
    work_dir = home / "tmp" / f"load-{context.run.run_id}"
    try:
        with wh.transaction(tables=[BRAZE_USERS.name, EXPORT_REJECTS.name]) as conn:
            try:
                report = load_export(conn, [home / p for p in raw], object_prefix=object_prefix,
                                     work_dir=work_dir)
            except ExportFileError as exc:
                # The file's name alone does not say which export; the raw copies are kept per export.
                folder = (home / raw[0]).parent if raw else home
                raise dg.Failure(description=f"export {object_prefix} was not loaded (the users loaded before "
                                             f"are kept): {exc} (raw copy in {folder})") from None
            count = conn.execute("SELECT count(*) FROM braze.users").fetchall()[0][0]
            preview = preview_markdown(conn, "SELECT customer_id, email, country, created_at, email_subscribe, "
                                             "total_revenue FROM braze.users ORDER BY customer_id")
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)
    wh.publish([BRAZE_USERS.name, EXPORT_REJECTS.name])
    if report.rejected:
        context.log.warning(f"{report.rejected} export line(s) rejected: {report.rejects_by_reason} "
                            "(see braze.export_rejects)")
    return dg.MaterializeResult(metadata={
        "object_prefix": object_prefix,
        "dagster/row_count": dg.MetadataValue.int(int(count)),
        "rejects_by_reason": dg.MetadataValue.json(report.rejects_by_reason),
        "preview": dg.MetadataValue.md(preview),
        **numeric_metadata({"files": report.files, "lines": report.lines, "loaded": report.loaded,
                            "duplicates_collapsed": report.duplicates, "rejected": report.rejected}),
    })
