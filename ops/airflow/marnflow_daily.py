"""marnflow's daily job as an Airflow DAG: one task, `marnflow run --date {{ ds }} --promote-if-better`.

Install: copy this file into the DAGs folder of a deployment whose workers have the `marnflow`
binary and the lake's credentials in their environment (AWS_* for an s3:// lake; never in this
file). Settings are DAG params, overridable per run in the trigger form or with
`airflow dags trigger marnflow_daily --conf '{"lake": "s3://bucket/lake"}'`.

* The timetable is a data interval from 02:30 UTC to 02:30 UTC the next day, so `{{ ds }}` is the
  day D whose logs are complete and the run starts at D+1 02:30 UTC, on Airflow 2 and 3 alike
  (Airflow 3's default cron timetable would make `ds` the trigger day instead).
* catchup=True: days between START_DATE (or the last run) and now are run, oldest first; so is a
  backfill (Airflow 3: `airflow backfill create --dag-id marnflow_daily --from-date D1
  --to-date D2`; Airflow 2: `airflow dags backfill -s D1 -e D2 marnflow_daily`).
* max_active_runs=1 and depends_on_past=True: days run one at a time and in order, and a failed
  day holds the later ones (a day's features read the previous day's user_history and daily
  counts). Clear the failed task once fixed: `airflow tasks clear marnflow_daily -s D -e D`.
* retries: 3, 30 minutes apart (raw logs that land late). `marnflow run` is idempotent per day,
  so a retry or a clear after a kill at any point ends in the same registry state.

Operations (a failed day, a backfill, a rollback, a corrupted partition): ops/RUNBOOK.md.
"""

from datetime import datetime, timedelta, timezone

from airflow.timetables.interval import CronDataIntervalTimetable

try:  # Airflow 3
    from airflow.providers.standard.operators.bash import BashOperator
    from airflow.sdk import DAG
except ImportError:  # Airflow 2.4+
    from airflow import DAG
    from airflow.operators.bash import BashOperator

# The first day with raw logs: enabling the DAG runs every day from here on (catchup).
START_DATE = datetime(2026, 1, 1, 2, 30, tzinfo=timezone.utc)

# The command of a day; {{ ds }} is the day (YYYY-MM-DD). Exit status 1 is a runtime failure,
# 2 a usage or configuration error (including too many bad raw rows): both fail the try.
# params.promote=false (e.g. while a rolled-back model is investigated) registers the candidate
# without promoting it.
RUN_COMMAND = (
    '"{{ params.marnflow }}" --lake "{{ params.lake }}" '
    'run --date {{ ds }} --model "{{ params.model }}"'
    "{% if params.promote %} --promote-if-better{% endif %}"
)

with DAG(
    dag_id="marnflow_daily",
    description="marnflow's daily run: features, training, evaluation, registration",
    schedule=CronDataIntervalTimetable("30 2 * * *", timezone="UTC"),
    start_date=START_DATE,
    catchup=True,
    max_active_runs=1,
    max_active_tasks=1,
    params={
        "marnflow": "/usr/local/bin/marnflow",
        "lake": "/var/lib/marnflow/lake",
        "model": "ctr",
        "promote": True,
    },
    default_args={
        "owner": "marnflow",
        "depends_on_past": True,
        "retries": 3,
        "retry_delay": timedelta(minutes=30),
        "execution_timeout": timedelta(hours=20),
    },
    tags=["marnflow", "ctr"],
) as dag:
    # The SQL jobs are the binary's embedded copies unless the workers' environment names a
    # folder of them (MARNFLOW_FEATURES_SQL_DIR=/opt/marnflow/sql).
    BashOperator(task_id="run", bash_command=RUN_COMMAND)
