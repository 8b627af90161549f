"""rollwatch: measures LLMs on a fixed set of programming problems, over months, into an
append-only, tamper-evident event log. The layout is described in the README's design
notes; the plug-in interfaces are in :mod:`rollwatch.abc`."""
