# Sourced by compat-tests/run, in-namespace and with-live-installation; defines shell functions and variables only.
# Its job: the closing-line contract ("N passed, N failed") across the layers that add checks around suite.py, and
# running one stage in the background with stop signals passed on and a time limit. Sourcing it must never change
# anything on the machine.
#
# The tally protocol: a layer that runs another one names a file in SSLWRAP_COMPAT_TALLY; the inner layer writes its
# counts there ("PASSED FAILED SKIPPED", plus the word "setup" when only its set-up failed) instead of printing the
# closing line. Each layer adds its own PASS/FAIL lines and hands the sum on; the outermost prints the closing line.

passed=0
failed=0
skipped=0
only_setup_failed=
outer_tally=${SSLWRAP_COMPAT_TALLY:-}
stage_pid=
stage_status=0

say_pass() {
    passed=$((passed + 1))
    only_setup_failed=
    echo "PASS $1${2:+ ($2)}"
}

say_fail() {
    failed=$((failed + 1))
    only_setup_failed=
    echo "FAIL $1: $2"
}

# Prints the closing line, or hands the counts to the layer that started this one. Status 0 only if nothing failed.
close_tally() {
    if [ -n "$outer_tally" ]; then
        echo "$passed $failed $skipped${only_setup_failed:+ setup}" >"$outer_tally"
    else
        local line="$passed passed, $failed failed"
        [ "$skipped" -gt 0 ] && line+=", $skipped skipped"
        echo "$line"
    fi
    [ "$failed" -eq 0 ]
}

fail_early() {
    # Keep the closing-line contract even when nothing could run.
    say_fail setup "$1"
    only_setup_failed=1
    close_tally
    exit 1
}

# read_tally FILE NAME: adds the counts the stage NAME left in FILE (after run_stage). A stage that left none, ran out
# of time, or ended badly although no check failed counts as one failure.
read_tally() {
    local file=$1 name=$2 counts=()
    if [ "$stage_status" -eq 124 ]; then
        say_fail "$name" "did not finish within its time limit and was stopped"
    fi
    if [ -r "$file" ] && read -r -a counts <"$file" && [[ "${counts[*]:0:3}" =~ ^[0-9]+\ [0-9]+\ [0-9]+$ ]]; then
        passed=$((passed + counts[0]))
        failed=$((failed + counts[1]))
        skipped=$((skipped + counts[2]))
        if [ "${counts[3]:-}" = setup ] && [ "$passed" -eq 0 ] && [ "$failed" -eq 1 ]; then
            only_setup_failed=1
        elif [ "$stage_status" -ne 0 ] && [ "${counts[1]}" -eq 0 ]; then
            say_fail "$name" "ended with status $stage_status although none of its checks failed"
        fi
    elif [ "$stage_status" -ne 124 ]; then
        say_fail "$name" "ended with status $stage_status without reporting its counts"
    fi
}

forward_signal() {
    [ -n "$stage_pid" ] && kill -s "$1" "$stage_pid" 2>/dev/null
}

# run_stage LIMIT COMMAND...: runs COMMAND under timeout (its own process group, so a Ctrl-C reaches it once, through
# this shell), passes TERM/INT/HUP on to it, and waits until it has ended; its status goes to stage_status. Bounded:
# after LIMIT seconds it gets TERM, and KILL 30 seconds after that (also after a passed-on signal).
run_stage() {
    local limit=$1
    shift
    timeout --kill-after=30 "$limit" "$@" &
    stage_pid=$!
    trap 'forward_signal TERM' TERM
    trap 'forward_signal INT' INT
    trap 'forward_signal HUP' HUP
    while :; do
        wait "$stage_pid"
        stage_status=$?
        # wait also returns when a trapped signal arrives; then the stage is still running.
        kill -0 "$stage_pid" 2>/dev/null || break
    done
    trap - TERM INT HUP
    stage_pid=
}
