#!/usr/bin/env bash
# NumPy version matrix: build the extension ONCE (against NumPy 2.x, as a user's
# `pip install` does), then install that same wheel into one venv per NumPy
# version and run the test suite there.
#   NUMPY_VERSIONS="1.23.5 1.26.4 2.0.2 latest" bash .ci/numpy_matrix.sh
set -euo pipefail
cd "$(dirname "$0")/.."
versions=${NUMPY_VERSIONS:-"1.23.5 latest"}
work=${PYNQ_ALLOC_MATRIX_DIR:-/tmp/pynq_alloc-matrix}
rm -rf "$work/wheel"
mkdir -p "$work/wheel"
python -m pip wheel -q --no-deps -w "$work/wheel" .
wheel=$(ls "$work"/wheel/pynq_alloc-*.whl)
# run from a copy of the tests only, so the checkout's pynq_alloc/ cannot shadow the wheel
rm -rf "$work/run" && mkdir -p "$work/run" && cp -r tests bench docs pynq_alloc README.md "$work/run/" && rm -f "$work"/run/pynq_alloc/*.so
status=0
for v in $versions; do
    spec="numpy==$v"
    [ "$v" = latest ] && spec="numpy"
    venv="$work/venv-$v"
    [ -x "$venv/bin/python" ] || python -m venv "$venv"
    "$venv/bin/python" -m pip install -q "$spec" "$wheel[test]"
    # a venv kept from an earlier run still has the old build of pynq_alloc
    "$venv/bin/python" -m pip install -q --force-reinstall --no-deps "$wheel"
    got=$("$venv/bin/python" -c "import numpy; print(numpy.__version__)")
    echo "== NumPy $got (asked $v)"
    # docs tools are the main lane's business; here only NumPy changes
    (cd "$work/run" && PYNQ_ALLOC_REQUIRE_TOOLS=0 "$venv/bin/python" -m pytest tests -q \
        -p no:cacheprovider --ignore=tests/test_docs.py) || status=1
done
exit $status
