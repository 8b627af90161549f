"""Programs that run inside the scoring sandbox, never imported by the daemon.

``zygote.py`` and ``oneshot.py`` are started as scripts (``python -I -B``; the zygote
through a one-line ``-c`` launcher that compiles it, see ``sandbox.zygote_command``) in
the sandbox: they import nothing but the standard library, and nothing of rollwatch's is
importable there. They live in a folder of their own so that a reader can tell at a
glance which code runs with the sample and which runs in the daemon. ``seccomp.py``
is the one the daemon imports as well (to log and test what the filter denies); the
zygote loads it by path.
"""
