"""The shape of the code, held by tests: imports run one way, the task registry is job.yml's, and
every table a task reads is written upstream of it."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from retailml.lakehouse import TABLES
from retailml.workflow.dag import load_dag
from retailml.workflow.tasks import TASKS, task_function

SRC = Path(__file__).resolve().parent.parent / "src" / "retailml"
STAGES = SRC / "stages"
# The generator's category table is data, not logic.
LONG_MODULES_ALLOWED = {SRC / "generate" / "world.py"}
MAX_MODULE_LINES = 600


def imports(path: Path) -> set[str]:
    """The modules a file imports (absolute names; relative imports resolved)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = ".".join(path.relative_to(SRC.parent).with_suffix("").parts[:-1])
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}" if base else parent
            found.add(base)
            found |= {f"{base}.{alias.name}" for alias in node.names}
    return found


def stage_of(path: Path) -> str:
    """The stage a file of stages/ belongs to (a module, or a package's folder)."""
    return path.relative_to(STAGES).parts[0].removesuffix(".py")


def stage_files() -> list[Path]:
    return [p for p in STAGES.rglob("*.py") if p.name != "__init__.py" or p.parent != STAGES]


def test_stages_import_neither_the_workflow_nor_another_stage() -> None:
    wrong = []
    for path in stage_files():
        mine = stage_of(path)
        for name in imports(path):
            if name.startswith("retailml.workflow"):
                wrong.append(f"{path.relative_to(SRC)} imports {name}")
            if name.startswith("retailml.stages."):
                other = name.split(".")[2]
                if other != mine:
                    wrong.append(f"{path.relative_to(SRC)} imports {name}")
    assert wrong == []


def test_the_layers_below_the_stages_import_no_stage_and_no_workflow() -> None:
    below = [SRC / "runlog.py", SRC / "lineage.py", SRC / "quality.py", SRC / "lakehouse.py"]
    below += [SRC / "spark.py", *(SRC / "ml").glob("*.py")]
    below += [SRC / "settings.py", SRC / "schemas.py", SRC / "errors.py"]
    wrong = [
        f"{path.relative_to(SRC)} imports {name}"
        for path in below
        for name in imports(path)
        if name.startswith(("retailml.stages", "retailml.workflow", "retailml.cli"))
    ]
    assert wrong == []


def test_the_report_package_imports_no_spark() -> None:
    wrong = [
        f"{path.relative_to(SRC)} imports {name}"
        for path in (SRC / "report").glob("*.py")
        for name in imports(path)
        if name.split(".")[0] in ("pyspark", "delta", "py4j")
    ]
    assert wrong == []


def test_the_task_registry_is_job_yml() -> None:
    assert tuple(TASKS) == load_dag().keys
    for name in TASKS:
        assert callable(task_function(name)), name


_READ = re.compile(r"(?:\.read|\.exists|_table\(\s*lake,)\(?\s*\"([a-z]+\.[a-z_]+)\"")
_WRITE = re.compile(r"\.(?:overwrite|replace_where|append|merge)\(\s*\"([a-z]+\.[a-z_]+)\"")


def tables_of(task: str) -> tuple[set[str], set[str]]:
    """The tables a task's code names in reads and in writes (string literals)."""
    path = STAGES / task
    files = list(path.rglob("*.py")) if path.is_dir() else [path.with_suffix(".py")]
    text = "\n".join(f.read_text(encoding="utf-8") for f in files)
    return set(_READ.findall(text)), set(_WRITE.findall(text))


def test_every_table_a_task_reads_is_written_by_a_task_upstream_of_it() -> None:
    dag = load_dag()
    writers = {t: tables_of(t)[1] for t in dag.keys}
    for table, spec in TABLES.items():
        if spec.producer != "run":  # ops.* tables: the runner writes them
            assert table in writers[spec.producer], f"{spec.producer} does not write {table}"
    for task in dag.keys:
        reads, _ = tables_of(task)
        upstream = dag.upstream(task) | {task}
        for table in reads:
            producer = TABLES[table].producer
            assert producer == "run" or producer in upstream, (
                f"{task} reads {table}, written by {producer}, which is not upstream of it"
            )
        assert reads or task == "ingest", f"{task} reads no table"


def test_no_module_is_over_600_lines() -> None:
    long = {
        str(p.relative_to(SRC)): n
        for p in SRC.rglob("*.py")
        if p not in LONG_MODULES_ALLOWED
        and (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_MODULE_LINES
    }
    assert long == {}
