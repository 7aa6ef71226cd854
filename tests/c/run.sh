#!/usr/bin/env bash
# Builds and runs the C core's plain-C tests (tests/c/test_*.c) into
# tests/c/bin/. CC and EXTRA_CFLAGS (e.g. "-fsanitize=address,undefined")
# choose the lane; for cross builds RUNNER runs each test (e.g.
# "qemu-aarch64-static -L SYSROOT", which also sets PYNQ_ALLOC_EMULATED=1 for
# the tests) and PYNQ_ALLOC_C_BIN puts the binaries elsewhere. Exit 77 from
# a test means skipped; with PYNQ_ALLOC_REQUIRE_HUGEPAGE=1 a skipped hugepage
# test is a failure.
set -euo pipefail
cd "$(dirname "$0")/../.."

CC=${CC:-cc}
EXTRA_CFLAGS=${EXTRA_CFLAGS:-}
RUNNER=${RUNNER:-}
BIN=${PYNQ_ALLOC_C_BIN:-tests/c/bin}
if [ -n "$RUNNER" ]; then
    export PYNQ_ALLOC_EMULATED=1
fi
mkdir -p "$BIN"

# The sources each test links; tests not named here link the whole core.
sources_for() {
    case "$1" in
        test_tlsf) echo src/core/tlsf.c ;;
        test_regidx) echo src/core/regidx.c src/core/tlsf.c ;;
        test_cache) echo src/core/cache.c ;;
        test_pool) echo src/core/pool.c src/core/tlsf.c ;;
        test_zero) echo src/core/zero.c ;;
        *) echo src/core/*.c ;;
    esac
}

passed=0
failed=0
skipped=0
for src in tests/c/test_*.c; do
    name=$(basename "$src" .c)
    # shellcheck disable=SC2046,SC2086 # word splitting of the flag and source lists is wanted
    if ! "$CC" -std=c11 -Wall -Wextra -Werror -O1 -g $EXTRA_CFLAGS -Isrc/core \
        -o "$BIN/$name" "$src" $(sources_for "$name") -pthread -ldl; then
        echo "FAIL $name: does not compile"
        failed=$((failed + 1))
        continue
    fi
    echo "== $name"
    set +e
    # shellcheck disable=SC2086 # RUNNER is a command with its arguments
    $RUNNER "$BIN/$name" 2>&1 | tee "$BIN/$name.log"
    rc=${PIPESTATUS[0]}
    set -e
    # the test's own last line: "N passed, M failed"
    summary=$(grep -E '^[0-9]+ passed, [0-9]+ failed$' "$BIN/$name.log" | tail -n 1 || true)
    p=0
    f=0
    if [ -n "$summary" ]; then
        read -r p _ f _ <<<"$summary"
    fi
    if [ "$rc" -eq 77 ]; then
        if [ "$name" = test_hugepage ] && [ "${PYNQ_ALLOC_REQUIRE_HUGEPAGE:-0}" = 1 ]; then
            echo "FAIL $name: skipped, but PYNQ_ALLOC_REQUIRE_HUGEPAGE=1"
            f=$((f + 1))
        else
            echo "SKIP $name"
            skipped=$((skipped + 1))
        fi
    elif [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then
        # crashed or a sanitizer stopped it before its summary
        echo "FAIL $name: exit status $rc"
        f=1
    fi
    passed=$((passed + p))
    failed=$((failed + f))
done

if [ "$skipped" -gt 0 ]; then
    echo "($skipped test programs skipped)"
fi
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
