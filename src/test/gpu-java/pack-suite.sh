#!/usr/bin/env bash
# Here (the build machine), after `mvn install` (+ test-compile) of the core library and the trainer: collects what
# the Java GPU suite needs on the GPU machine beside the natives bundle of ../shared/gpu-java (LibTorch's and our
# -gpu natives, a JRE): this build's class JARs, the test classes of both modules as JARs, JUnit's console launcher,
# the trainer's runtime dependencies other than Bytedeco's (lib/), and run-suite.sh. About 4 MB; carry OUTDIR (a
# folder of the checkout that git ignores) with the last upload.
#   bash src/test/gpu-java/pack-suite.sh OUTDIR
# Environment: M2 (default ~/.m2/repository), JUNIT_CONSOLE_VERSION (default 1.11.4, JUnit 5.11.4's platform).
set -euo pipefail
root=$(cd "$(dirname "$0")/../../.." && pwd)
out=${1:?usage: pack-suite.sh OUTDIR}
M2=${M2:-$HOME/.m2/repository}
v=${JUNIT_CONSOLE_VERSION:-1.11.4}
console=$M2/org/junit/platform/junit-platform-console-standalone/$v/junit-platform-console-standalone-$v.jar
if [ ! -f "$console" ]; then
  mvn -B -q -Dmaven.repo.local="$M2" dependency:get -Dartifact=org.junit.platform:junit-platform-console-standalone:$v
fi
mkdir -p "$out"
out=$(cd "$out" && pwd)
rm -f "$out"/*.jar
cp "$(ls "$root"/target/power-attention-*.jar | grep -v -- '-linux-x86_64' | head -1)" "$out/power-attention.jar"
cp "$(ls "$root"/trainer/target/power-attention-trainer-*.jar | grep -v -- '-shaded' | head -1)" "$out/power-attention-trainer.jar"
jar cf "$out/power-attention-tests.jar" -C "$root/target/test-classes" .
jar cf "$out/power-attention-trainer-tests.jar" -C "$root/trainer/target/test-classes" .
cp "$console" "$out/junit-console.jar"
# the trainer's own dependencies (the loss plot's XChart); Bytedeco's come with the natives bundle, JUnit's with
# the console
mkdir -p "$out/lib"
rm -f "$out"/lib/*.jar
mvn -B -q -Dmaven.repo.local="$M2" -f "$root/trainer" dependency:build-classpath -Dmdep.includeScope=runtime \
  -Dmdep.outputFile="$out/lib/classpath.txt" >/dev/null
tr ':' '\n' < "$out/lib/classpath.txt" | grep '\.jar$' \
  | grep -v -e /org/bytedeco/ -e /io/github/powerattention/ -e /org/junit/ -e /org/opentest4j/ -e /org/apiguardian/ \
  | xargs -r -I{} cp {} "$out/lib/"
rm "$out/lib/classpath.txt"
cp "$root/src/test/gpu-java/run-suite.sh" "$out/"
du -sh "$out"
