"""The zygote: a Python interpreter started once inside the sandbox, forking one child
per job. This file runs INSIDE the sandbox (``python3 -I -S -c <this source>``) and
uses only the standard library; it never imports rollwatch.

Protocol on stdin/stdout: 4-byte big-endian length, then a JSON object. A job is
``{"program", "stdin", "timeout", "cpu", "mem", "out_cap", "nonce"}``; the reply
says how the child ended, its capped output, and whether it reached the end of its
program (the nonce, written by the harness frame to a pipe only after the program
returned; the program's text never contains it).

The zygote is PID 1 of the sandbox's PID namespace (bubblewrap ``--as-pid-1``), so
a child's ``kill(-1)`` cannot reach it, and after every job ``kill(-1, SIGKILL)``
removes everything the job started, daemonized grandchildren included. Outside a
PID namespace it does the same only when it runs as a uid of its own.
"""

import json
import os
import resource
import select
import shutil
import signal
import struct
import sys
import time

OWN_NAMESPACE = os.getpid() == 1
OWN_UID = os.environ.get("RW_OWN_UID") == "1"
WORK = os.environ.get("RW_WORK", "/tmp/job")
IN, OUT = sys.stdin.buffer, sys.stdout.buffer

# Warm the modules candidates and tests import most, once, before any fork.
for _m in ("math", "re", "collections", "itertools", "functools", "heapq", "bisect", "string",
           "typing", "random", "json", "decimal", "fractions", "statistics", "hashlib", "copy"):
    try:
        __import__(_m)
    except ImportError:
        pass


def read_msg():
    head = IN.read(4)
    if len(head) < 4:
        return None
    (n,) = struct.unpack(">I", head)
    return json.loads(IN.read(n))


def write_msg(obj):
    data = json.dumps(obj).encode()
    OUT.write(struct.pack(">I", len(data)) + data)
    OUT.flush()


def reap_all():
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def kill_everything(child):
    if OWN_NAMESPACE or OWN_UID:
        try:
            os.kill(-1, signal.SIGKILL)
        except OSError:
            pass
    else:
        try:
            os.killpg(child, signal.SIGKILL)
        except OSError:
            pass
    # Everything is dead or dying; collect them (with a bound, in case of D state).
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline:
        try:
            pid, _ = os.waitpid(-1, 0 if OWN_NAMESPACE else os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            time.sleep(0.001)


def read_capped(path, cap):
    try:
        with open(path, "rb") as f:
            data = f.read(cap + 1)
    except OSError:
        return "", False
    return data[:cap].decode("utf-8", "replace"), len(data) > cap


def child(job, verdict_w):
    os.setsid()
    stdin_path = os.path.join(WORK, "stdin")
    fd = os.open(stdin_path, os.O_RDONLY)
    os.dup2(fd, 0)
    os.close(fd)
    out = os.open(os.path.join(WORK, "stdout"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    err = os.open(os.path.join(WORK, "stderr"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.dup2(out, 1)
    os.dup2(err, 2)
    os.close(out)
    os.close(err)
    os.dup2(verdict_w, 3)
    os.close(verdict_w)
    cap = int(job["out_cap"])
    limits = [
        (resource.RLIMIT_CPU, (int(job["cpu"]), int(job["cpu"]) + 1)),
        (resource.RLIMIT_AS, (int(job["mem"]), int(job["mem"]))),
        (resource.RLIMIT_FSIZE, (cap * 4 + 65536, cap * 4 + 65536)),
        (resource.RLIMIT_NOFILE, (64, 64)),
        (resource.RLIMIT_NPROC, (int(job.get("nproc", 32)), int(job.get("nproc", 32)))),
        (resource.RLIMIT_CORE, (0, 0)),
    ]
    for what, value in limits:
        try:
            resource.setrlimit(what, value)
        except (ValueError, OSError):
            pass
    # Writing past RLIMIT_FSIZE then fails with EFBIG instead of killing silently.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    sys.setrecursionlimit(10000)
    nonce = job.pop("nonce").encode()
    program = job.pop("program")
    code = None
    try:
        code = compile(program, "solution.py", "exec")
        del program
        exec(code, {"__name__": "__main__", "__builtins__": __builtins__})
    except SystemExit as e:
        if e.code not in (None, 0):
            os._exit(e.code if isinstance(e.code, int) else 1)
    except BaseException:
        import traceback

        traceback.print_exc()
        try:
            sys.stderr.flush()
        except BaseException:
            pass
        os._exit(1)
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except BaseException:
        os._exit(1)
    os.write(3, nonce)
    os._exit(0)


def run(job):
    shutil.rmtree(WORK, ignore_errors=True)
    os.makedirs(WORK, exist_ok=True)
    with open(os.path.join(WORK, "stdin"), "w") as f:
        f.write(job.get("stdin") or "")
    nonce = job["nonce"]
    r, w = os.pipe()
    start = time.monotonic()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        try:
            os.chdir(WORK)
            child(job, w)
        finally:
            os._exit(1)
    os.close(w)
    timeout = float(job["timeout"])
    status = usage = None
    pidfd = os.pidfd_open(pid)
    try:
        ready, _, _ = select.select([pidfd], [], [], timeout)
    finally:
        os.close(pidfd)
    wall = time.monotonic() - start
    timed_out = not ready
    if not timed_out:
        _, status, usage = os.wait4(pid, 0)
    # Whatever the job started and left behind (or the job itself, on a timeout) dies now.
    kill_everything(pid)
    os.set_blocking(r, False)
    got = b""
    try:
        got = os.read(r, 4096)
    except OSError:
        pass
    os.close(r)
    cap = int(job["out_cap"])
    stdout, out_trunc = read_capped(os.path.join(WORK, "stdout"), cap)
    stderr, _ = read_capped(os.path.join(WORK, "stderr"), 4096)
    shutil.rmtree(WORK, ignore_errors=True)
    reply = {
        "timed_out": timed_out,
        "wall_ms": round(wall * 1000, 3),
        "completed": got == nonce.encode(),
        "stdout": stdout,
        "stdout_truncated": out_trunc,
        "stderr": stderr[-2000:],
    }
    if status is not None:
        if os.WIFSIGNALED(status):
            reply["signal"] = os.WTERMSIG(status)
        elif os.WIFEXITED(status):
            reply["exit"] = os.WEXITSTATUS(status)
    if usage is not None:
        reply["cpu_s"] = round(usage.ru_utime + usage.ru_stime, 4)
        reply["max_rss_kb"] = usage.ru_maxrss
    return reply


def main():
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    write_msg({"ready": True, "pid1": OWN_NAMESPACE, "uid": os.getuid()})
    while True:
        job = read_msg()
        if job is None:
            return
        try:
            reply = run(job)
        except Exception as e:
            reply = {"error": f"{type(e).__name__}: {e}"}
        reap_all()
        write_msg(reply)


main()
