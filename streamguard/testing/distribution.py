"""Fetch the Apache Kafka broker's jars with Maven into a local cache.

No Kafka broker ships on PyPI, so the test kit resolves ``org.apache.kafka:kafka_2.13`` (plus a log4j2
binding, so broker logs reach a file instead of vanishing) from Maven Central once and reuses the
cache afterwards: a second run needs no network.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from streamguard.errors import KafkaUnavailable

KAFKA_VERSION = os.environ.get("STREAMGUARD_KAFKA_VERSION", "4.1.1")
LOG4J_VERSION = "2.24.3"
SLF4J_VERSION = "2.0.17"

_POM = """<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>dev.streamguard</groupId><artifactId>kafka-broker-libs</artifactId><version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency><groupId>org.slf4j</groupId><artifactId>slf4j-api</artifactId>
      <version>{slf4j}</version></dependency>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId>
      <version>{kafka}</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-core</artifactId>
      <version>{log4j}</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-slf4j2-impl</artifactId>
      <version>{log4j}</version></dependency>
  </dependencies>
</project>
"""

_ALTERNATIVES = (
    "Alternatives: point streamguard at an existing cluster with "
    "STREAMGUARD_BOOTSTRAP=host:port, or use Docker with STREAMGUARD_KAFKA=docker (testcontainers)."
)


def cache_root() -> Path:
    """Where broker jars live: ``$STREAMGUARD_KAFKA_CACHE`` or ``~/.cache/streamguard/kafka``."""
    env = os.environ.get("STREAMGUARD_KAFKA_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "streamguard" / "kafka"


def java_executable() -> str:
    """The ``java`` to run brokers with (``$JAVA_HOME/bin/java`` first), or a clear error."""
    java_home = os.environ.get("JAVA_HOME")
    if java_home and (Path(java_home) / "bin" / "java").exists():
        return str(Path(java_home) / "bin" / "java")
    found = shutil.which("java")
    if not found:
        raise KafkaUnavailable(f"`java` (17+) was not found on PATH; it runs the local Kafka broker. {_ALTERNATIVES}")
    return found


def ensure_kafka_libs(version: str = KAFKA_VERSION, *, quiet: bool = True) -> Path:
    """Return the folder of broker jars for ``version``, fetching it with Maven on first use."""
    libs = cache_root() / version / "libs"
    marker = libs / ".complete"
    if marker.exists():
        return libs
    mvn = shutil.which("mvn")
    if not mvn:
        raise KafkaUnavailable(f"`mvn` was not found on PATH; it fetches the Kafka broker jars once. {_ALTERNATIVES}")
    java_executable()
    libs.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=libs.parent) as work:
        pom = Path(work) / "pom.xml"
        pom.write_text(_POM.format(kafka=version, log4j=LOG4J_VERSION, slf4j=SLF4J_VERSION))
        staging = Path(work) / "libs"
        cmd = [mvn, "-B", "-f", str(pom), "dependency:copy-dependencies",
               f"-DoutputDirectory={staging}", "-DincludeScope=runtime"]
        if quiet:
            cmd.insert(2, "-q")
        started = time.monotonic()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-30:])
            raise KafkaUnavailable(
                f"Maven could not fetch org.apache.kafka:kafka_2.13:{version} (exit {proc.returncode}):\n{tail}\n"
                f"{_ALTERNATIVES}"
            )
        (staging / ".complete").write_text(f"fetched in {time.monotonic() - started:.1f}s\n")
        if libs.exists():
            shutil.rmtree(libs)
        staging.rename(libs)
    return libs


if __name__ == "__main__":  # `python -m streamguard.testing.distribution`: fetch (or confirm) the cache
    t0 = time.monotonic()
    path = ensure_kafka_libs(quiet=False)
    print(f"Apache Kafka {KAFKA_VERSION} jars ready in {path} ({time.monotonic() - t0:.1f}s)")
