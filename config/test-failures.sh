#!/usr/bin/env bash
# config/test-failures.sh LOG: why a part of `make test` failed, from its output (LOG), printed
# again at the end of the run. For each failing Rust test: its name and what it said when it
# failed (from its panic on, as much as MAX_LINES allows). For a part that failed otherwise
# (fmt, clippy, a build): the last lines of its output.
set -euo pipefail
log=$1
MAX_LINES=${MAX_LINES:-40}
part=$(basename "$log" .log)

# cargo test prints each failing test's output between "---- NAME stdout ----" and the next
# such line or the "failures:" list; the panic's message is at its end, after what the test
# printed while it ran.
failing=$(awk -v max="$MAX_LINES" '
	/^---- .* stdout ----$/ { flush(); name = $2; n = 0; from = 0; next }
	/^failures:$/ { flush(); name = ""; next }
	name != "" {
		lines[++n] = $0
		if (!from && $0 ~ /panicked at/) from = n
	}
	function flush(   i, first, last) {
		if (name == "") return
		while (n > 0 && lines[n] == "") n--
		first = from ? from : (n > max ? n - max + 1 : 1)
		last = first + max - 1 < n ? first + max - 1 : n
		printf "--- %s:\n", name
		for (i = first; i <= last; i++) print "    " lines[i]
		if (last < n) printf "    [... %d more lines in the full output]\n", n - last
		delete lines
	}
	END { flush() }
' "$log")

echo "make test: why $part failed:"
if [ -n "$failing" ]; then
	echo "$failing"
else
	tail -n "$MAX_LINES" "$log" | sed 's/^/    /'
fi
