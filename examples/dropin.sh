#!/bin/sh
# Add a job to a queuectl spool with nothing but POSIX sh (and mktemp): write in tmp/, then
# rename into pending/.
# Usage: examples/dropin.sh 'echo hello' [ID]
# The spool is $QUEUECTL_SPOOL, else ${XDG_DATA_HOME:-$HOME/.local/share}/queuectl; it must
# exist (queuectl init). Prints the file's name.
#
# Without ID the job gets its own id: the file's name, which must therefore never repeat (ids stay
# taken; a drop-in whose id is taken is rejected as a duplicate). So the name is made by mktemp
# (no file has it now) from the time and ten random characters (no earlier drop-in had it), never
# from $$ alone: a later shell that gets the same PID would reuse it. With ID, a second drop-in of
# the same ID is refused on purpose (rejected/, "duplicate id"): use it to run something once.
set -eu
cmd=${1:?usage: dropin.sh COMMAND [ID]}
id=${2:-}
spool=${QUEUECTL_SPOOL:-${XDG_DATA_HOME:-$HOME/.local/share}/queuectl}
if [ ! -d "$spool/tmp" ] || [ ! -d "$spool/pending" ]; then
  echo "dropin.sh: no spool at $spool; create it with queuectl init" >&2
  exit 1
fi

# JSON-escape the command: backslash and double quote, and turn tabs and newlines into escapes.
esc=$(printf '%s' "$cmd" | sed -e 's/\\/\\\\/g' -e 's/"/\\"/g' -e 's/\t/\\t/g' | awk 'NR>1{printf "\\n"} {printf "%s", $0}')
tmp=$(mktemp "$spool/tmp/job.$(date +%Y%m%dT%H%M%S).XXXXXXXXXX")
if [ -n "$id" ]; then
  printf '{"id": "%s", "command": "%s"}\n' "$id" "$esc" > "$tmp"
else
  printf '{"command": "%s"}\n' "$esc" > "$tmp"
fi
# mv within one file system is rename(2): the job appears in pending/ whole or not at all.
# (sync makes it survive a power cut; drop it if that does not matter to you.)
sync "$tmp" 2>/dev/null || sync
name=${tmp##*/}
mv "$tmp" "$spool/pending/$name"
echo "$name"
