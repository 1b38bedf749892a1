#!/usr/bin/env bash
# Builds and tests everything with Bazel, offline: `bazel test //...`, the consumer example
# (examples/consumer), and the check that every *_test.py file is a Bazel test target.
#
#   PYTHON_BIN_PATH=/path/to/venv/bin/python bash ci/bazel.sh
#
# PYTHON_BIN_PATH (required) is the interpreter the tests run on; it must have torch, pytest.
set -euo pipefail

if [[ -z "${PYTHON_BIN_PATH:-}" ]]; then
    echo "ci/bazel.sh: set PYTHON_BIN_PATH to a Python interpreter that has torch and pytest" >&2
    exit 2
fi
export PYTHON_BIN_PATH
cd "$(dirname "$0")/.."
root=$PWD
consumer=$root/examples/consumer

if ! command -v bazel >/dev/null; then
    sudo=$([[ $(id -u) == 0 ]] || echo sudo)
    $sudo apt-get update -q
    $sudo apt-get install -y -q bazel-bootstrap
fi

shutdown() {
    (cd "$consumer" && bazel shutdown) || true
    (cd "$root" && bazel shutdown) || true
}
trap shutdown EXIT

# Prints each test target of the workspace in $1 with the last line of its test.log(s):
# pytest's summary line.
summarize() {
    (
        cd "$1"
        for label in $(bazel query 'tests(//...)' 2>/dev/null); do
            path=${label#//}
            path=${path/://}
            path=${path#/}
            for log in $(find bazel-testlogs/ -path "bazel-testlogs/$path/*" -name test.log 2>/dev/null | sort); do
                shard=${log#bazel-testlogs/$path/}
                shard=${shard%test.log}
                echo "$label${shard:+ ${shard%/}}: $(grep -v '^[[:space:]]*$' "$log" | tail -n 1)"
            done
        done
    )
}

status=0
echo "--- bazel test //... ($root)"
bazel test //... --test_output=errors || status=1
summarize "$root"

echo "--- bazel test //... ($consumer)"
(cd "$consumer" && bazel test //... --test_output=errors) || status=1
summarize "$consumer"

echo "--- every *_test.py is a Bazel test target"
"$PYTHON_BIN_PATH" tools/check_bazel_targets.py --workspace "$root" || status=1
"$PYTHON_BIN_PATH" tools/check_bazel_targets.py --workspace "$consumer" || status=1

exit $status
