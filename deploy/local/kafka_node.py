"""A single-node Apache Kafka (KRaft: broker + controller) run from Maven Central jars."""

from __future__ import annotations

import base64
import logging
import os
import shutil
import subprocess
import tempfile
import time
import uuid
import xml.etree.ElementTree as ET
from pathlib import Path

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

from deploy.local.daemons import Daemon
from deploy.local.errors import FetchFailed, MissingTool, StartFailed
from deploy.local.ports import HOST, ensure_free, is_listening

log = logging.getLogger(__name__)

POM = Path(__file__).with_name("pom.xml")
HEAP_OPTS = ("-Xms64m", "-Xmx512m")
_POM_NS = {"m": "http://maven.apache.org/POM/4.0.0"}


def kafka_version(pom: Path = POM) -> str:
    """The Kafka version pinned in deploy/local/pom.xml."""
    version = ET.parse(pom).getroot().findtext("m:properties/m:kafka.version", namespaces=_POM_NS)
    if not version:
        raise FetchFailed(f"{pom} has no <kafka.version> property")
    return version


def default_libs_dir() -> Path:
    """`$DFD_KAFKA_LIBS`, else `~/.cache/dfd/kafka-<version>/libs`."""
    if override := os.environ.get("DFD_KAFKA_LIBS"):
        return Path(override)
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "dfd" / f"kafka-{kafka_version()}" / "libs"


def ensure_kafka_libs(libs_dir: Path, pom: Path = POM) -> Path:
    """Copy the broker's jars into `libs_dir` with Maven, unless a Kafka jar is already there."""
    if any(libs_dir.glob("kafka_2.13-*.jar")):
        return libs_dir
    mvn = shutil.which("mvn")
    if mvn is None:
        raise MissingTool("mvn not found: install Maven (apt-get install maven)")
    libs_dir.parent.mkdir(parents=True, exist_ok=True)
    log.info("copying Kafka %s jars into %s with Maven", kafka_version(pom), libs_dir)
    with tempfile.TemporaryDirectory(dir=libs_dir.parent, prefix=".libs-") as tmp:
        staging = Path(tmp) / "libs"
        result = subprocess.run(
            [
                mvn,
                "-q",
                "-B",
                "-f",
                str(pom),
                "dependency:copy-dependencies",
                "-DincludeScope=runtime",
                f"-DoutputDirectory={staging}",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            raise FetchFailed(f"mvn failed ({result.returncode}):\n{_tail(result.stdout)}")
        try:
            staging.rename(libs_dir)
        except OSError:
            if not any(libs_dir.glob("kafka_2.13-*.jar")):  # not filled by a concurrent run
                raise
    return libs_dir


def new_cluster_id() -> str:
    """A random KRaft cluster id (16 bytes, URL-safe base64 without padding, no leading '-')."""
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if not cluster_id.startswith("-"):
            return cluster_id


def render_server_properties(port: int, controller_port: int, data_dir: Path) -> str:
    """The broker + controller configuration of one node listening on 127.0.0.1."""
    settings = {
        "process.roles": "broker,controller",
        "node.id": "1",
        "listeners": f"PLAINTEXT://{HOST}:{port},CONTROLLER://{HOST}:{controller_port}",
        "advertised.listeners": f"PLAINTEXT://{HOST}:{port}",
        "controller.listener.names": "CONTROLLER",
        "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "inter.broker.listener.name": "PLAINTEXT",
        "controller.quorum.bootstrap.servers": f"{HOST}:{controller_port}",
        "log.dirs": str(data_dir),
        "num.partitions": "4",
        "auto.create.topics.enable": "false",
        "offsets.topic.replication.factor": "1",
        "offsets.topic.num.partitions": "8",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "transaction.state.log.num.partitions": "4",
        "share.coordinator.state.topic.replication.factor": "1",
        "share.coordinator.state.topic.min.isr": "1",
        "group.initial.rebalance.delay.ms": "0",
        "log.cleaner.dedupe.buffer.size": str(16 * 1024 * 1024),
    }
    return "".join(f"{key}={value}\n" for key, value in settings.items())


def render_log4j_config(log_file: Path) -> str:
    """log4j2 configuration: INFO and above into `log_file`."""
    return (
        "status = warn\n"
        "appender.file.type = File\n"
        "appender.file.name = file\n"
        f"appender.file.fileName = {log_file}\n"
        "appender.file.layout.type = PatternLayout\n"
        "appender.file.layout.pattern = [%d] %p %m (%c)%n\n"
        "rootLogger.level = info\n"
        "rootLogger.appenderRef.file.ref = file\n"
    )


def _tail(text: str, lines: int = 20) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def _java() -> str:
    java_home = os.environ.get("JAVA_HOME")
    java = str(Path(java_home) / "bin" / "java") if java_home else shutil.which("java")
    if java is None or not Path(java).exists():
        raise MissingTool(
            "java not found: install a JRE 17+ (apt-get install openjdk-17-jre-headless)"
        )
    return java


class KafkaNode:
    """One KRaft node whose config, data, logs and pid file live under `home`.

    Data survive `stop`/`start` (broker restart drills); the storage is re-formatted only when it
    is not formatted yet or the node's configuration changed (e.g. other ports).
    """

    def __init__(self, home: Path, port: int, controller_port: int, libs_dir: Path) -> None:
        self.home = home
        self.port = port
        self.controller_port = controller_port
        self.libs_dir = libs_dir
        self.data_dir = home / "data"
        self.config_file = home / "server.properties"
        self.daemon = Daemon("kafka", home / "kafka.pid", home / "stdout.log")

    @property
    def bootstrap(self) -> str:
        """Bootstrap servers for clients, `127.0.0.1:<port>`."""
        return f"{HOST}:{self.port}"

    def pid(self) -> int | None:
        return self.daemon.pid()

    def is_ready(self, timeout_s: float = 5.0) -> bool:
        """True when the broker answers a metadata request and lists itself."""
        if not is_listening(self.port):
            return False
        admin = AdminClient({"bootstrap.servers": self.bootstrap, "logger": log})
        try:
            return bool(admin.list_topics(timeout=timeout_s).brokers)
        except KafkaException:
            return False

    def start(self, timeout_s: float = 120.0) -> bool:
        """Start the node and wait until it answers; False when it was already running."""
        if self.pid() is not None:
            return False
        java = _java()
        ensure_kafka_libs(self.libs_dir)
        ensure_free(self.port, "the Kafka listener")
        ensure_free(self.controller_port, "the Kafka controller")
        self._prepare_storage(java)
        self.daemon.start(
            [java, *HEAP_OPTS, *self._jvm_args(), "kafka.Kafka", str(self.config_file)],
            cwd=self.home,
        )
        self._wait_ready(timeout_s)
        return True

    def stop(self, timeout_s: float = 30.0, kill: bool = False) -> bool:
        """Stop the node (controlled shutdown, or SIGKILL when `kill`); False if not running."""
        return self.daemon.stop(timeout_s, kill=kill)

    def _jvm_args(self) -> list[str]:
        return [
            "-Djava.awt.headless=true",
            "-XX:+ExitOnOutOfMemoryError",
            f"-Dlog4j2.configurationFile={self.home / 'log4j2.properties'}",
            "-cp",
            str(self.libs_dir / "*"),
        ]

    def _prepare_storage(self, java: str) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        config = render_server_properties(self.port, self.controller_port, self.data_dir)
        previous = self.config_file.read_text() if self.config_file.exists() else None
        if previous != config:
            shutil.rmtree(self.data_dir, ignore_errors=True)
            self.config_file.write_text(config)
        (self.home / "log4j2.properties").write_text(render_log4j_config(self.home / "server.log"))
        if (self.data_dir / "meta.properties").exists():
            return
        result = subprocess.run(
            [
                java,
                *self._jvm_args(),
                "kafka.tools.StorageTool",
                "format",
                "--cluster-id",
                new_cluster_id(),
                "--config",
                str(self.config_file),
                "--standalone",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            raise StartFailed(f"formatting the KRaft storage failed:\n{_tail(result.stdout)}")
        log.info("formatted KRaft storage in %s", self.data_dir)

    def _wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while not self.is_ready():
            if self.daemon.exited():
                raise StartFailed(f"Kafka exited while starting; see {self.home / 'server.log'}")
            if time.monotonic() > deadline:
                raise StartFailed(f"Kafka did not answer within {timeout_s:.0f}s")
            time.sleep(0.25)
