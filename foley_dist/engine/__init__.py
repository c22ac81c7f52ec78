"""The distributed engine: messages, transport, the static schedule and the loop that walks it.

Knows no model and no media: stages are opaque callables here."""
