#!/bin/sh
# Add a job to a queuectl spool with nothing but POSIX sh: write in tmp/, then rename into pending/.
# Usage: examples/dropin.sh 'echo hello' [ID]
# The spool is $QUEUECTL_SPOOL, else ${XDG_DATA_HOME:-$HOME/.local/share}/queuectl.
set -eu
cmd=${1:?usage: dropin.sh COMMAND [ID]}
id=${2:-}
spool=${QUEUECTL_SPOOL:-${XDG_DATA_HOME:-$HOME/.local/share}/queuectl}
mkdir -p "$spool/tmp" "$spool/pending"

# JSON-escape the command: backslash and double quote, and turn tabs and newlines into escapes.
esc=$(printf '%s' "$cmd" | sed -e 's/\\/\\\\/g' -e 's/"/\\"/g' -e 's/\t/\\t/g' | awk 'NR>1{printf "\\n"} {printf "%s", $0}')
name=${id:-job}.$(date +%s).$$
tmp="$spool/tmp/$name.json"
if [ -n "$id" ]; then
  printf '{"id": "%s", "command": "%s"}\n' "$id" "$esc" > "$tmp"
else
  printf '{"command": "%s"}\n' "$esc" > "$tmp"
fi
# mv within one file system is rename(2): the job appears in pending/ whole or not at all.
# (sync makes it survive a power cut; drop it if that does not matter to you.)
sync "$tmp" 2>/dev/null || sync
mv "$tmp" "$spool/pending/$name.json"
echo "$name"
