"""A fork server for the abuse cases: torch and the other heavy libraries imported once.

Each histomodels case of ``test_abuse_cli.py`` is a new ``python -c CODE ARGS`` process that
spends ~3-4 CPU seconds importing torch, torchvision, timm and scikit-learn before it reads
its hostile file; across forty cases that was most of the abuse suite's time.
:class:`CaseServer` starts one interpreter that imports those third-party libraries
(:data:`PRELOAD`; none of ours: every case still imports histomodels itself, as a new
process does) and forks it per case. The child does what ``python -c`` would: a new
session, its own working directory, environment, ``RLIMIT_AS``, standard streams and
``sys.argv``; the module-level paths the preloaded libraries derived from the server's
``HOME`` when imported (``huggingface_hub.constants.HF_HOME``, ``HF_HUB_CACHE``,
``HF_TOKEN_PATH``… through timm, torchvision's dataset folder, ``site.USER_SITE``) re-pointed
at the case's ``HOME``, as a new process computes them; runs CODE as ``__main__``, prints an
uncaught exception's traceback, then does the interpreter's exit work (non-daemon threads,
atexit handlers, flushed streams). The server reaps it with ``wait4`` and writes "exit
code, peak RSS (KiB), CPU seconds" as the launcher of ``test_abuse_cli.py`` does; the
child's peak RSS starts at the server's size (the preloaded libraries resident), which a
case reaches anyway by importing them.
``test_abuse_cli.py::test_a_forked_case_is_what_a_new_process_does`` runs cases both ways.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

#: Third-party modules the server imports before it forks (never histomodels/histofetch).
#: Some derive paths from ``HOME`` when imported (huggingface_hub through timm, torchvision):
#: each child re-points those at its own ``HOME`` (``HOMED`` in :data:`SERVER`); values
#: derived from other variables (``HF_HOME``, ``TORCH_HOME``, ``XDG_CACHE_HOME``) are not, so
#: cases must not set those. matplotlib is left out: it reads its configuration folder from
#: ``HOME`` into objects, not plain strings.
PRELOAD = ("torch", "torchvision", "timm", "numpy", "h5py", "PIL.Image", "scipy",
           "sklearn.metrics", "typer", "rich", "pydantic")  # fmt: skip

SERVER = r"""
import importlib, json, os, select, sys, types
for name in sys.argv[1].split(","):
    importlib.import_module(name)

# (module namespace, name, rest of the path after HOME) of every module-level string the
# preloaded libraries derived from this process's HOME: a child re-points them at its own
SERVER_HOME = os.path.expanduser("~").rstrip(os.sep)
HOMED = [
    (mod.__dict__, key, value[len(SERVER_HOME):])
    for name, mod in list(sys.modules.items()) if name not in ("__main__", "__mp_main__")
    and isinstance(getattr(mod, "__dict__", None), dict)
    for key, value in list(mod.__dict__.items())
    if SERVER_HOME and isinstance(value, str)
    and (value == SERVER_HOME or value.startswith(SERVER_HOME + os.sep))
]


def child(req):
    import atexit, resource, threading
    os.setsid()
    resource.setrlimit(resource.RLIMIT_AS, (req["as_cap"], req["as_cap"]))
    os.chdir(req["cwd"])
    fds = [os.open(os.devnull, os.O_RDONLY), os.open(req["stdout"], os.O_WRONLY),
           os.open(req["stderr"], os.O_WRONLY)]
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
        os.close(fd)
    os.environ.clear()
    os.environ.update(req["env"])
    home = os.environ.get("HOME", "").rstrip(os.sep)
    for names, key, rest in HOMED if home else ():
        names[key] = home + rest
    sys.argv = ["-c", *req["args"]]
    main = types.ModuleType("__main__")
    sys.modules["__main__"] = main
    code = 0
    try:
        exec(compile(req["code"], "<string>", "exec"), main.__dict__)
    except SystemExit as exc:  # as the interpreter treats it
        if exc.code is None or isinstance(exc.code, int):
            code = exc.code or 0
        else:
            print(exc.code, file=sys.stderr)
            code = 1
    except BaseException as exc:  # as uncaught: sys.excepthook, without this frame
        exc.__traceback__ = exc.__traceback__.tb_next if exc.__traceback__ else None
        sys.excepthook(type(exc), exc, exc.__traceback__)
        code = 1
    try:  # the interpreter's exit work
        threading._shutdown()
        atexit._run_exitfuncs()
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        os._exit(code)


def write(path, text):
    with open(path + ".part", "w") as fh:
        fh.write(text)
    os.replace(path + ".part", path)


running, pending, open_ = {}, b"", True
while open_ or running:
    if open_ and select.select([0], [], [], 0.02)[0]:
        chunk = os.read(0, 1 << 16)
        open_ = bool(chunk)
        pending += chunk
        while b"\n" in pending:
            line, pending = pending.split(b"\n", 1)
            req = json.loads(line)
            pid = os.fork()
            if pid == 0:
                child(req)
            running[pid] = req
            write(req["pid"], str(pid))
    elif not open_:
        select.select([], [], [], 0.02)
    while running:
        pid, status, usage = os.wait4(-1, os.WNOHANG)
        if pid == 0:
            break
        req = running.pop(pid)
        code = os.waitstatus_to_exitcode(status)
        write(req["result"], f"{code} {usage.ru_maxrss} {usage.ru_utime + usage.ru_stime}")
"""


class CaseServer:
    """The fork server process; :meth:`run` is one case (thread-safe)."""

    def __init__(self, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", SERVER, ",".join(PRELOAD)],
            stdin=subprocess.PIPE,
            text=True,
            env=env,
        )
        self.lock = threading.Lock()

    def run(
        self,
        code: str,
        args: list[str],
        *,
        cwd: Path,
        env: dict[str, str],
        stdout: Path,
        stderr: Path,
        result: Path,
        as_cap: int,
        time_cap: float,
    ) -> None:
        """Run one case; ``result`` holds "code maxrss_kib cpu_s" once it ended (absent if
        it was killed at ``time_cap``)."""
        pid_file = result.with_name(result.name + ".pid")
        stdout.touch()
        stderr.touch()
        req = {"code": code, "args": args, "cwd": str(cwd), "env": env, "stdout": str(stdout),
               "stderr": str(stderr), "result": str(result), "pid": str(pid_file),
               "as_cap": as_cap}  # fmt: skip
        with self.lock:
            assert self.proc.stdin is not None
            self.proc.stdin.write(json.dumps(req) + "\n")
            self.proc.stdin.flush()
        deadline = time.monotonic() + time_cap
        while not result.exists():
            if self.proc.poll() is not None:
                raise RuntimeError(f"the case server ended (exit {self.proc.returncode})")
            if time.monotonic() > deadline and pid_file.exists():
                os.killpg(int(pid_file.read_text()), signal.SIGKILL)  # a hang: its session
                deadline = float("inf")
            time.sleep(0.02)
        pid_file.unlink(missing_ok=True)

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self.proc.wait(timeout=60)
