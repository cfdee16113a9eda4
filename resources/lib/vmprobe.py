#!/usr/bin/env python3
"""Measure a VMM process from outside, the same way for every VMM.

Used by resources/bench.sh; each mode prints one line of KEY=VALUE pairs.

  vmprobe.py first PATTERN [--poke] [--timeout S] -- CMD...
      Wall seconds from starting CMD to the first line of its stdout that
      contains PATTERN (first_s) and its exit status. (Not its peak RSS:
      wait4's counts the Python process it was forked from.) With --poke a byte is written to CMD's stdin every 2 ms
      until PATTERN shows (for a restored guest waiting on its console).
      After PATTERN, one byte is written to stdin and stdin is closed.

  vmprobe.py memory PATTERN GUEST_MIB [--timeout S] -- CMD...
      Once PATTERN shows, reads /proc/PID: VmRSS, VmHWM, and the resident
      part of the guest's RAM (the largest mapping of at least GUEST_MIB);
      overhead_kib = VmHWM - guest_touched_kib; anon_kib: the VMM's own
      anonymous memory (heap, stacks, buffers: what each more VM costs),
      without the file pages of its binary and libraries, which every
      process running them shares. Then writes a byte to stdin.

  vmprobe.py qemu-save PATTERN QMP_SOCKET FILE [--timeout S] -- CMD...
      Starts QEMU (CMD must include -qmp unix:QMP_SOCKET,server=on,wait=off),
      waits for PATTERN, migrates the running VM to FILE and quits
      (save_s: the stop + migrate time).

  vmprobe.py api-load SOCKET [--timeout S] -- CMD...
      Starts kiln (CMD must serve its API on SOCKET), and while it runs
      sends `GET /` over SOCKET again and again, timing each answer:
      api_median_ms, api_p99_ms, api_max_ms, requests. With a guest that
      keeps its disk busy, this is how long the API waits for the VMM.

The process measured is CMD itself (no wrapper), so RSS figures are the
VMM's. A run that does not show PATTERN within the timeout is killed and
reported with first_s=- and the last line it printed.
"""

import json
import re
import socket
import subprocess
import sys
import threading
import time


def spawn(cmd):
    return subprocess.Popen(
        cmd,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


class Watch:
    """Reads a process's stdout and stderr in threads, remembering the
    time the first stdout line containing a pattern arrived."""

    def __init__(self, proc, pattern):
        self.proc, self.pattern = proc, pattern.encode()
        self.found = threading.Event()
        self.eof = threading.Event()
        self.at = None
        self.last = b""
        self.err = []
        threading.Thread(target=self._out, daemon=True).start()
        threading.Thread(target=self._err, daemon=True).start()

    def _out(self):
        for line in self.proc.stdout:
            if line.strip():
                self.last = line.strip()
            if not self.found.is_set() and self.pattern in line:
                self.at = time.monotonic()
                self.found.set()
        self.eof.set()

    def wait(self, timeout):
        """Until the pattern shows or stdout ends: whether it showed."""
        deadline = time.monotonic() + timeout
        while not self.found.wait(0.01) and not self.eof.is_set():
            if time.monotonic() > deadline:
                break
        return self.found.is_set()

    def _err(self):
        for line in self.proc.stderr:
            self.err.append(line.strip())
            del self.err[:-20]


def send(proc, data, close=False):
    try:
        proc.stdin.write(data)
        proc.stdin.flush()
        if close:
            proc.stdin.close()
    except (BrokenPipeError, ValueError, OSError):
        pass


def reap(proc, timeout):
    """Waits for the process, killing it after `timeout`: its exit code."""
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        kill(proc)
        return proc.wait()


def kill(proc):
    try:
        proc.kill()
    except ProcessLookupError:
        pass


def why(w):
    """The reason a run failed: an error line on stderr, else the last line
    it printed."""
    errors = [e for e in w.err if b"error" in e.lower()]
    text = (errors[0] if errors else w.last or (w.err[-1] if w.err else b"no output")).decode(
        "utf-8", "replace"
    )
    return re.sub(r"\s+", "_", text)[:160]


def first(pattern, cmd, timeout, poke):
    t0 = time.monotonic()
    proc = spawn(cmd)
    w = Watch(proc, pattern)
    if poke:
        while not w.found.wait(0.002) and not w.eof.is_set():
            if time.monotonic() - t0 > timeout:
                break
            send(proc, b"x")
    if w.wait(timeout):
        send(proc, b"x", close=True)
    else:
        kill(proc)
    code = reap(proc, timeout)
    if not w.found.is_set():
        return f"first_s=- exit={code} why={why(w)}"
    return f"first_s={w.at - t0:.6f} exit={code}"


def proc_kib(pid, name, key):
    """The KiB figure `key` in /proc/PID/NAME (status, smaps_rollup)."""
    with open(f"/proc/{pid}/{name}") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def guest_touched_kib(pid, guest_kib):
    """Rss and Anonymous of the largest mapping at least guest_kib big
    (guest RAM)."""
    best = (0, 0, 0)
    cur = None
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key == "Size":
                cur = [int(rest.split()[0]), 0, 0]
            elif key == "Rss" and cur:
                cur[1] = int(rest.split()[0])
            elif key == "Anonymous" and cur:
                cur[2] = int(rest.split()[0])
                if cur[0] >= guest_kib and cur[0] > best[0]:
                    best = tuple(cur)
                cur = None
    return best[1], best[2]


def started(cmd, pattern, timeout, key):
    """Starts `cmd` and waits for `pattern` on its console: (the process,
    None), or, after killing it, (None, the failure line for `key`)."""
    proc = spawn(cmd)
    w = Watch(proc, pattern)
    if w.wait(timeout):
        return proc, None
    kill(proc)
    code = reap(proc, timeout)
    return None, f"{key}=- exit={code} why={why(w)}"


def memory(pattern, guest_mib, cmd, timeout):
    proc, failed = started(cmd, pattern, timeout, "overhead_kib")
    if failed:
        return failed
    time.sleep(0.2)  # let start-up settle
    rss = proc_kib(proc.pid, "status", "VmRSS")
    hwm = proc_kib(proc.pid, "status", "VmHWM")
    guest, guest_anon = guest_touched_kib(proc.pid, guest_mib * 1024)
    anon = proc_kib(proc.pid, "smaps_rollup", "Anonymous") - guest_anon
    send(proc, b"x", close=True)
    code = reap(proc, timeout)
    return (
        f"overhead_kib={hwm - guest} anon_kib={anon} rss_kib={rss} hwm_kib={hwm} "
        f"guest_touched_kib={guest} exit={code}"
    )


def qmp(path, commands):
    """Runs QMP commands; returns the last answer."""
    s = socket.socket(socket.AF_UNIX)
    s.connect(path)
    f = s.makefile("rwb")
    f.readline()  # greeting
    answer = None
    for c in ["qmp_capabilities"] + commands:
        if isinstance(c, str):
            c = {"execute": c}
        f.write(json.dumps(c).encode() + b"\n")
        f.flush()
        while True:
            answer = json.loads(f.readline())
            if "return" in answer or "error" in answer:
                break
    s.close()
    return answer


def qemu_save(pattern, sock, path, cmd, timeout):
    proc, failed = started(cmd, pattern, timeout, "save_s")
    if failed:
        return failed
    t0 = time.monotonic()
    qmp(sock, [{"execute": "migrate", "arguments": {"uri": f"exec:cat > {path}"}}])
    state = "?"
    while time.monotonic() - t0 < timeout:
        state = qmp(sock, ["query-migrate"]).get("return", {}).get("status", "?")
        if state in ("completed", "failed", "cancelled"):
            break
        time.sleep(0.01)
    t1 = time.monotonic()
    qmp(sock, ["quit"])
    code = reap(proc, timeout)
    if state != "completed":
        return f"save_s=- exit={code} why=migration_{state}"
    return f"save_s={t1 - t0:.6f} exit={code}"


def get_root(path):
    """One `GET /` over the Unix socket: seconds until the whole answer."""
    t0 = time.monotonic()
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(10)
    s.connect(path)
    s.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
    while s.recv(65536):
        pass
    s.close()
    return time.monotonic() - t0


def api_load(sock, cmd, timeout):
    proc = spawn(cmd)
    w = Watch(proc, "\0never")
    t0 = time.monotonic()
    times = []
    while proc.poll() is None and time.monotonic() - t0 < timeout:
        try:
            times.append(get_root(sock))
        except OSError:
            time.sleep(0.005)  # not listening yet, or going away
    if proc.poll() is None:
        kill(proc)
    code = reap(proc, timeout)
    if len(times) < 5:
        return f"api_median_ms=- exit={code} why=only_{len(times)}_answers_{why(w)}"
    times.sort()
    ms = [t * 1000 for t in times]
    return (
        f"api_median_ms={ms[len(ms) // 2]:.3f} api_p99_ms={ms[len(ms) * 99 // 100]:.3f} "
        f"api_max_ms={ms[-1]:.3f} requests={len(ms)} exit={code}"
    )


def main(argv):
    if "--" not in argv:
        sys.exit(__doc__)
    i = argv.index("--")
    opts, cmd = argv[1:i], argv[i + 1:]
    timeout = 120.0
    if "--timeout" in opts:
        j = opts.index("--timeout")
        timeout = float(opts[j + 1])
        del opts[j:j + 2]
    poke = "--poke" in opts
    opts = [o for o in opts if o != "--poke"]
    mode, args = opts[0], opts[1:]
    if mode == "first" and len(args) == 1:
        print(first(args[0], cmd, timeout, poke))
    elif mode == "memory" and len(args) == 2:
        print(memory(args[0], int(args[1]), cmd, timeout))
    elif mode == "api-load" and len(args) == 1:
        print(api_load(args[0], cmd, timeout))
    elif mode == "qemu-save" and len(args) == 3:
        print(qemu_save(args[0], args[1], args[2], cmd, timeout))
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv)
