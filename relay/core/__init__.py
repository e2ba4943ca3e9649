"""Sans-I/O core: protocol parsing, exact order books, checksums and the multi-upstream merge.

Nothing in this package touches a socket, a timer or the event loop: every entry point takes
the frame bytes and the current time, and returns what should happen. The I/O layers
(`relay.upstream`, `relay.server`, `relay.ops`) are thin shells around it.
"""
