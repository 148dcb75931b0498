#!/usr/bin/env bash
# Build the Java client: clients/java/target/lmroute-java-client.jar (runnable fat jar).
#
#   ./scripts/build_java_client.sh                # generate stubs from proto/, compile, unit tests, jar
#   ./scripts/build_java_client.sh -DskipTests    # extra arguments go to Maven
#   java -jar clients/java/target/lmroute-java-client.jar conformance --addr HOST:PORT --cases FILE
#
# Needs a JDK 17+ and Maven 3.8+ on PATH; every dependency and plugin is pinned in clients/java/pom.xml and
# downloaded once from Maven Central into ~/.m2. Idempotent: a rerun with nothing changed skips Maven.
# Set LMROUTE_JAVA_FORCE=1 to rebuild anyway. Concurrent runs are serialised with a lock.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PROJECT="$ROOT/clients/java"
JAR="$PROJECT/target/lmroute-java-client.jar"

die() { echo "build_java_client.sh: error: $*" >&2; exit 1; }

command -v java >/dev/null || die "java not found on PATH (need a JDK 17+; Debian: apt-get install openjdk-17-jdk-headless)"
command -v mvn >/dev/null || die "mvn not found on PATH (need Maven 3.8+; Debian: apt-get install maven)"
java_major="$(java -XshowSettings:properties -version 2>&1 | sed -n 's/^ *java.specification.version = //p')"
[[ "${java_major%%.*}" =~ ^[0-9]+$ && "${java_major%%.*}" -ge 17 ]] \
  || die "Java 17+ required (java.specification.version is '${java_major:-unknown}'); set JAVA_HOME / PATH"
[[ -f "$ROOT/proto/lmroute/v1/router.proto" ]] || die "missing $ROOT/proto/lmroute/v1/router.proto"

mkdir -p "$PROJECT/target"
exec 9>"$PROJECT/target/.build.lock"
flock 9

# Up to date: the jar is newer than the pom, every source file and folder (adds, deletes) and the proto; no extra Maven arguments.
if [[ -f "$JAR" && $# -eq 0 && "${LMROUTE_JAVA_FORCE:-0}" != 1 ]]; then
  # (only the .proto files count in proto/: setup.sh regenerates the Python stubs beside them every run)
  newer="$(find "$PROJECT/pom.xml" "$PROJECT/src" -newer "$JAR" -print -quit)"
  [[ -n "$newer" ]] || newer="$(find "$ROOT/proto" -name '*.proto' -newer "$JAR" -print -quit)"
  if [[ -z "$newer" ]]; then
    echo "$JAR (up to date)"
    exit 0
  fi
fi

cd "$PROJECT"
if ! mvn -B -q package "$@" >&2; then  # Maven output to stderr: stdout is only the jar path
  die "Maven build failed in $PROJECT (rerun without -q for details: cd clients/java && mvn -B package)"
fi
[[ -f "$JAR" ]] || die "Maven succeeded but $JAR is missing"
echo "$JAR"
