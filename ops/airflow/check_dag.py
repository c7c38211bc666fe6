"""Checks ops/airflow/marnflow_daily.py; run by tests/ops.rs, usable by hand.

    python3 ops/airflow/check_dag.py DAG_FILE [--airflow] [--ds YYYY-MM-DD] [--param KEY=VALUE]...

Always (standard library only): the file compiles, and its DAG(...) call says catchup=True,
max_active_runs=1, a schedule, retries >= 1 and depends_on_past=True in default_args, and the
command runs `marnflow --lake … run --date {{ ds }} … --promote-if-better`.
With --airflow (needs Airflow importable, e.g. the venv of ops/ci-tools.sh): loads the file with
Airflow's DagBag (no import errors) and checks the same on the loaded DAG, plus the timetable: the
first run is for START_DATE's day and starts the next day, after the day is over.
With --ds: renders the task's command for that day (Jinja, as Airflow does) with the DAG's params
overridden by --param, for the caller to run.

Prints one JSON object (checks passed, Airflow version, rendered command); exits 1 naming every
failed check.
"""

import argparse
import ast
import json
import re
import sys

DAG_ID = "marnflow_daily"


def literal(node):
    try:
        return ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError):
        return None


def static_checks(path, failures, passed):
    source = open(path, encoding="utf-8").read()
    compile(source, path, "exec")  # what py_compile checks, without writing __pycache__
    passed.append("py_compile")
    tree = ast.parse(source, path)
    strings = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            value = literal(node.value)
            if isinstance(value, str):
                strings[node.targets[0].id] = value
    calls = [
        n
        for n in ast.walk(tree)
        if isinstance(n, ast.Call) and getattr(n.func, "id", getattr(n.func, "attr", None)) == "DAG"
    ]
    if len(calls) != 1:
        failures.append(f"expected one DAG(...) call, found {len(calls)}")
        return strings, None
    kw = {k.arg: k.value for k in calls[0].keywords}

    def expect(name, wanted):
        got = literal(kw[name]) if name in kw else None
        if got != wanted:
            failures.append(f"DAG({name}=...) is {got!r}, expected {wanted!r}")
        else:
            passed.append(f"{name}={wanted!r}")

    expect("dag_id", DAG_ID)
    expect("catchup", True)
    expect("max_active_runs", 1)
    if "schedule" not in kw:
        failures.append("DAG(...) has no schedule")
    else:
        passed.append("schedule given")
    default_args = None
    if isinstance(kw.get("default_args"), ast.Dict):
        node = kw["default_args"]
        default_args = {literal(k): literal(v) for k, v in zip(node.keys, node.values)}
    if not isinstance(default_args, dict):
        failures.append("DAG(default_args=...) is not a dict")
    else:
        if not isinstance(default_args.get("retries"), int) or default_args["retries"] < 1:
            failures.append(f"default_args retries is {default_args.get('retries')!r}, expected >= 1")
        else:
            passed.append(f"retries={default_args['retries']}")
        if default_args.get("depends_on_past") is not True:
            failures.append("default_args depends_on_past is not True: a failed day would not hold later days")
        else:
            passed.append("depends_on_past=True")
    params = literal(kw["params"]) if "params" in kw else None
    return strings, params if isinstance(params, dict) else None


def command_checks(command, failures, passed):
    if command is None:
        failures.append("no bash_command found")
        return
    for pattern, what in [
        (r"--lake\s+\S+.*\brun\b", "--lake before the run command"),
        (r"\brun\s+--date\s+\{\{\s*ds\s*\}\}", "run --date {{ ds }}"),
        (r"--promote-if-better\b", "--promote-if-better"),
    ]:
        if re.search(pattern, command):
            passed.append(f"command has {what}")
        else:
            failures.append(f"the command lacks {what}: {command}")


def render(template, ds, params):
    """The command as Airflow renders it (Jinja), or None without jinja2."""
    try:
        import jinja2
    except ImportError:
        print("check_dag: jinja2 not installed (pip install jinja2): not rendering", file=sys.stderr)
        return None
    return jinja2.Environment(undefined=jinja2.StrictUndefined).from_string(template).render(ds=ds, params=params)


def airflow_checks(path, failures, passed):
    import warnings

    warnings.simplefilter("ignore")
    import airflow

    try:
        from airflow.dag_processing.dagbag import DagBag
    except ImportError:
        from airflow.models.dagbag import DagBag
    try:
        bag = DagBag(dag_folder=path, include_examples=False)
    except TypeError:  # Airflow 3.1+: no example DAGs to leave out
        bag = DagBag(dag_folder=path)
    if bag.import_errors:
        failures.extend(f"Airflow import error: {e}" for e in bag.import_errors.values())
        return airflow.__version__, None
    dag = bag.dags.get(DAG_ID)
    if dag is None:
        failures.append(f"DagBag has no DAG {DAG_ID}; it has {sorted(bag.dags)}")
        return airflow.__version__, None
    passed.append(f"DagBag loads {DAG_ID} with Airflow {airflow.__version__}")
    (task,) = dag.tasks
    for name, got, wanted in [
        ("dag.catchup", dag.catchup, True),
        ("dag.max_active_runs", dag.max_active_runs, 1),
        ("task.depends_on_past", task.depends_on_past, True),
    ]:
        (passed.append(name) if got == wanted else failures.append(f"{name} is {got!r}, expected {wanted!r}"))
    if task.retries >= 1:
        passed.append(f"task.retries={task.retries}")
    else:
        failures.append(f"task.retries is {task.retries}")
    from airflow.timetables.base import TimeRestriction

    timetable = dag.timetable
    if not hasattr(timetable, "next_dagrun_info"):  # Airflow 3's task-SDK timetables
        from airflow.serialization.encoders import coerce_to_core_timetable

        timetable = coerce_to_core_timetable(timetable)
    first = timetable.next_dagrun_info(
        last_automated_data_interval=None,
        restriction=TimeRestriction(earliest=dag.start_date, latest=None, catchup=True),
    )
    start = dag.start_date
    logical = first.logical_date if hasattr(first, "logical_date") else first.data_interval.start
    if logical.date() != start.date():
        failures.append(f"the first run's ds is {logical.date()}, expected the start day {start.date()}")
    elif first.run_after.date() <= logical.date():
        failures.append(f"the run for {logical.date()} starts at {first.run_after}, before that day is over")
    else:
        passed.append(f"first run: ds {logical.date()}, starts {first.run_after.isoformat()}")
    return airflow.__version__, task.bash_command


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dag_file")
    ap.add_argument("--airflow", action="store_true", help="also load the DAG with Airflow")
    ap.add_argument("--ds", help="render the command for this day")
    ap.add_argument("--param", action="append", default=[], help="KEY=VALUE overriding a DAG param")
    args = ap.parse_args()
    failures, passed = [], []
    strings, params = static_checks(args.dag_file, failures, passed)
    command = strings.get("RUN_COMMAND")
    version = None
    if args.airflow:
        version, loaded_command = airflow_checks(args.dag_file, failures, passed)
        command = loaded_command or command
    command_checks(command, failures, passed)
    rendered = None
    if args.ds and command and params is not None:
        for kv in args.param:
            key, _, value = kv.partition("=")
            params[key] = {"true": True, "false": False}.get(value, value)
        rendered = render(command, args.ds, params)
    print(json.dumps({"passed": passed, "failed": failures, "airflow": version, "rendered": rendered}))
    if failures:
        for f in failures:
            print(f"check_dag: {f}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
