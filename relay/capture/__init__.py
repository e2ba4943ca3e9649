"""The flight recorder (issue 16): the capture format, its reader, and the off-loop writer.

Not wired into the daemon yet (no `capture:` config section, no taps on the lines or the
published stream, no `kraken-relay capture` / `replay` commands): those are the next steps."""
