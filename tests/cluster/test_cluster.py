"""The whole workflow on a real Spark standalone cluster, compared with a local run.

One master and two workers, each worker its own JVM with one core, started with what ships in
the pyspark package (``bin/spark-class`` with the Master and Worker classes), and always stopped
afterwards. The same generated data and settings go through ``retailml run`` twice — against
``spark://127.0.0.1:<port>`` and against ``local[2]`` — and the gold tables must agree.

Not part of ``make test`` (about ten minutes): ``make cluster-test``.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyspark
import pytest
from pyspark.sql import SparkSession

pytestmark = pytest.mark.cluster

SPARK_HOME = Path(pyspark.__file__).parent
WORKERS = 2
# The same settings for both runs: the number of partitions decides how ALS blocks its data, so
# the two runs must agree on it to agree on the results. The propensity model is logistic
# regression only: RandomForest's bagging and xgboost's row subsampling depend on how rows are
# laid out across partitions, which differs between executors on a cluster and local mode (seen:
# held-out ROC-AUC 0.90785 vs 0.90753 for RF, 0.90723 vs 0.90772 for xgboost, enough to change
# which family becomes champion), while L-BFGS and ALS give the same numbers in both.
SHARED = [
    *("--set", "spark.shuffle_partitions=4"),
    *("--set", "spark.driver_memory=2g"),
    *("--set", 'train.families=["logistic_regression"]'),
]


@dataclass(frozen=True)
class Cluster:
    master_url: str
    web_url: str
    work_dirs: tuple[Path, ...]  # one per worker; an executor it starts writes its logs there


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _spark_class(cls: str, *args: str, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "SPARK_HOME": str(SPARK_HOME), "SPARK_LOCAL_IP": "127.0.0.1"}
    with log.open("ab") as out:
        return subprocess.Popen(
            [str(SPARK_HOME / "bin" / "spark-class"), cls, *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,  # its own process group, so stopping it stops the JVM
        )


def _alive_workers(web_url: str) -> int:
    try:
        with urllib.request.urlopen(f"{web_url}/json/", timeout=2) as response:
            state = json.load(response)
    except OSError:
        return 0
    return sum(1 for w in state.get("workers", []) if w.get("state") == "ALIVE")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    folder = tmp_path_factory.mktemp("cluster")
    port, web = _free_port(), _free_port()
    master_url, web_url = f"spark://127.0.0.1:{port}", f"http://127.0.0.1:{web}"
    procs = [
        _spark_class(
            "org.apache.spark.deploy.master.Master",
            *("--host", "127.0.0.1", "--port", str(port), "--webui-port", str(web)),
            log=folder / "master.log",
        )
    ]
    work_dirs = tuple(folder / f"worker-{n}" for n in range(WORKERS))
    try:
        for n, work in enumerate(work_dirs):
            work.mkdir()
            procs.append(
                _spark_class(
                    "org.apache.spark.deploy.worker.Worker",
                    *("--cores", "1", "--memory", "3g", "--work-dir", str(work)),
                    *("--host", "127.0.0.1", "--webui-port", str(_free_port()), master_url),
                    log=folder / f"worker-{n}.log",
                )
            )
        deadline = time.monotonic() + 90
        while _alive_workers(web_url) < WORKERS:
            if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                logs = "\n".join((folder / f).read_text()[-2000:] for f in os.listdir(folder)
                                 if f.endswith(".log"))  # fmt: skip
                pytest.fail(f"the standalone cluster did not come up:\n{logs}")
            time.sleep(1)
        yield Cluster(master_url, web_url, work_dirs)
    finally:
        for proc in reversed(procs):
            _stop(proc)


def _run(folder: Path, *settings: str) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RETAILML_")}
    env.pop("MLFLOW_TRACKING_URI", None)
    env["SPARK_LOCAL_IP"] = "127.0.0.1"
    retailml = str(Path(sys.executable).with_name("retailml"))
    proc = subprocess.run(
        [retailml, *SHARED, *settings, "run"], cwd=folder, env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return proc.stdout


def test_the_workflow_on_a_standalone_cluster_matches_a_local_run(
    cluster: Cluster, tmp_path: Path, spark: SparkSession
) -> None:
    on_cluster = _run(
        tmp_path / "cluster",
        *("--set", f"spark.master={cluster.master_url}"),
        *("--set", 'spark.conf={"spark.executor.memory": "2g", "spark.cores.max": "2"}'),
    )
    assert "succeeded in" in on_cluster.splitlines()[-1]
    # Both workers started an executor (its own JVM) for the run: app-*/<executor id>/ folders.
    for work in cluster.work_dirs:
        assert list(work.glob("app-*/*/stderr")), f"no executor ran on the worker in {work}"

    local = _run(tmp_path / "local", "--set", "spark.master=local[2]")
    assert "succeeded in" in local.splitlines()[-1]

    def table(folder: str, name: str):  # type: ignore[no-untyped-def]
        layer, t = name.split(".")
        return spark.read.format("delta").load(str(tmp_path / folder / "lakehouse" / layer / t))

    for name in (
        "bronze.transactions",
        "silver.transactions",
        "silver.customer_features",
        "gold.purchase_propensity",
        "gold.top_buyers",
        "gold.recommendations",
    ):
        assert table("cluster", name).count() == table("local", name).count(), name

    def top(folder: str) -> list[tuple[int, str, float]]:
        rows = table(folder, "gold.top_buyers").orderBy("rank").collect()
        return [(r["rank"], r["customer_id"], round(r["probability"], 6)) for r in rows]

    assert top("cluster") == top("local")

    def recommendations(folder: str) -> set[tuple[str, int, str]]:
        rows = (
            table(folder, "gold.recommendations")
            .select("customer_id", "rank", "product_id")
            .collect()
        )
        return {(r[0], r[1], r[2]) for r in rows}

    assert recommendations("cluster") == recommendations("local")
