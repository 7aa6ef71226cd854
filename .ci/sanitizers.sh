#!/usr/bin/env bash
# Memory-checker lanes:
#   1. the C core's tests under ASan+UBSan, then under TSan (the thread test);
#   2. the Python suite against an ASan+UBSan build of the extension (runtime
#      LD_PRELOADed into an uninstrumented Python); leaks from our frames fail;
#   3. a subset of the Python suite under valgrind memcheck.
# Lanes: SANITIZER_LANES="c tsan python valgrind" (default: all).
set -euo pipefail
cd "$(dirname "$0")/.."
lanes=${SANITIZER_LANES:-"c tsan python valgrind"}
work=${PYNQ_ALLOC_SAN_DIR:-/tmp/pynq_alloc-san}
py=$(python -c 'import sys; print(sys.executable)') # not a pyenv shim: LD_PRELOAD must reach Python itself
status=0

need() { # install the sanitizer runtimes / valgrind if a new machine lacks them
    local missing=()
    [ -e "$(gcc -print-file-name=libasan.so)" ] || missing+=(libasan8)
    [ -e "$(gcc -print-file-name=libubsan.so)" ] || missing+=(libubsan1)
    [ -e "$(gcc -print-file-name=libtsan.so)" ] || missing+=(libtsan2)
    command -v valgrind >/dev/null || missing+=(valgrind)
    if [ ${#missing[@]} -gt 0 ]; then
        apt-get update -qq && apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
}
need

for lane in $lanes; do
    case $lane in
    c)
        echo "== C core tests, ASan+UBSan"
        EXTRA_CFLAGS="-fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer" \
            bash tests/c/run.sh || status=1
        ;;
    tsan)
        echo "== C core tests, ThreadSanitizer"
        EXTRA_CFLAGS="-fsanitize=thread" TSAN_OPTIONS="halt_on_error=1" bash tests/c/run.sh || status=1
        ;;
    python)
        echo "== Python suite, extension built with ASan+UBSan"
        rm -rf "$work/src" "$work/asan" && mkdir -p "$work/asan"
        mkdir -p "$work/src" && git ls-files -z | tar --null -T - -cf - | tar -xf - -C "$work/src"
        (cd "$work/src" && PYNQ_ALLOC_WERROR=1 \
            PYNQ_ALLOC_CFLAGS="-fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer -O1" \
            python setup.py -q build_ext --inplace)
        (cd "$work/src" &&
            LD_PRELOAD="$(gcc -print-file-name=libasan.so):$(gcc -print-file-name=libubsan.so)" \
            ASAN_OPTIONS="detect_leaks=1:allocator_may_return_null=1:log_path=$work/asan/log" PYTHONMALLOC=malloc \
            UBSAN_OPTIONS="print_stacktrace=1:log_path=$work/asan/ubsan" LSAN_OPTIONS="exitcode=0" \
            "$py" -m pytest tests -q -p no:cacheprovider) || status=1
        python .ci/sanitizer_report.py asan "$work/asan/*" || status=1
        ;;
    valgrind)
        echo "== Python suite subset under valgrind memcheck"
        rm -rf "$work/vg" && mkdir -p "$work/vg"
        PYTHONMALLOC=malloc valgrind --tool=memcheck --leak-check=full --show-leak-kinds=definite \
            --errors-for-leak-kinds=definite --num-callers=30 --trace-children=no --xml=yes \
            --xml-file="$work/vg/%p.xml" --log-file="$work/vg/%p.log" \
            "$py" -m pytest -q -p no:cacheprovider tests/test_api.py tests/test_views.py \
            tests/test_lifetime.py tests/test_sync.py tests/test_errors.py -k "not 100k" || status=1
        python .ci/sanitizer_report.py valgrind "$work/vg/*.xml" || status=1
        ;;
    *)
        echo "unknown lane $lane" && status=1
        ;;
    esac
done
exit $status
