"""Adapters that make LLAVIDAL usable from other projects' tools (each imports its tool lazily)."""
