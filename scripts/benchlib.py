"""scripts/benchlib.py — what scripts/bench_pubsub and scripts/bench_store share: the Pub/Sub
emulator (start, REST API), the generated data (scripts/gen_bench_logs.py into bench-data/pubsub/,
reused while unchanged), child processes (each in its own process group, all killed on the way
out), CPU accounting from /proc, a running `schedwatch run` whose stderr lines are timestamped,
and the machine and revision lines of the reports.

Imported by both scripts (they put scripts/ on sys.path); not a command. Paths are relative to
the repository root, where both scripts chdir before using them.
"""
import base64
import datetime
import hashlib
import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = "bench-data/pubsub"
RUN_LOGS = DATA + "/run"
GEN = "scripts/gen_bench_logs.py"
BIN = os.environ.get("SCHEDWATCH_BIN", "target/release/schedwatch")
EMULATOR = os.environ.get(
    "PUBSUB_EMULATOR_BIN",
    "/usr/lib/google-cloud-sdk/platform/pubsub-emulator/bin/cloud-pubsub-emulator")
PROJECT = "bench-project"

# schedwatch's config: its defaults for the source and the state, spelled out so the numbers
# stay comparable when a default changes.
CONFIG = """\
[source]
streams = 1
max_outstanding_messages = 1000
max_outstanding_bytes = 67108864
lease_extension = "20s"

[state]
commit_interval = "5ms"
commit_max_messages = 500
"""
SCHEDWATCH_ENV = {"SCHEDWATCH_LOG": "schedwatch=debug,info", "NO_COLOR": "1"}

ANSI = re.compile(r"\x1b\[[0-9;]*m")
BATCH = re.compile(r"batch processed.*?\bmessages=(\d+)")


class SetupError(Exception):
    """The benchmark cannot run (exit 2)."""


def log(msg):
    """A progress line on stderr, named after the running script."""
    print(f"{os.path.basename(sys.argv[0])}: {msg}", file=sys.stderr, flush=True)


# ---- child processes ---------------------------------------------------------------------

CHILDREN = []  # every Popen started here, killed (with its process group) on the way out


def spawn(cmd, **kw):
    """Starts cmd in its own process group (Ctrl-C reaches only us; cleanup kills the group)."""
    p = subprocess.Popen(cmd, start_new_session=True, **kw)
    CHILDREN.append(p)
    return p


def kill_children():
    for p in CHILDREN:
        if p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass


def wait_exit(p, timeout):
    """Waits for p without polling (the exit moment is timed). Returns (exit status, CPU
    seconds it used), or (None, None) on timeout; the status is also stored in p.returncode."""
    result = {"cpu": None}
    done = threading.Event()

    def waiter():
        try:
            _, status, usage = os.wait4(p.pid, 0)
            p.returncode = os.waitstatus_to_exitcode(status)
            result["cpu"] = usage.ru_utime + usage.ru_stime
        except ChildProcessError:  # reaped by a concurrent poll()
            p.wait()
        done.set()
    threading.Thread(target=waiter, daemon=True).start()
    if not done.wait(timeout):
        return None, None
    return p.returncode, result["cpu"]


def proc_cpu_seconds(pid):
    """User + system CPU seconds of one live process (0 when gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def group_cpu_seconds(pgid):
    """CPU seconds of every live process in the process group pgid (the emulator's JVM)."""
    total = 0.0
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                if int(fields[2]) == pgid:
                    total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
            except (OSError, IndexError, ValueError):
                pass
    return total


def machine_ticks():
    """(busy, total) jiffies of all CPUs from /proc/stat."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    idle = v[3] + (v[4] if len(v) > 4 else 0)
    return sum(v) - idle, sum(v)


def vm_hwm_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


class CpuWindow:
    """CPU used by a consumer, the emulator and the whole machine from creation to stop()."""

    def __init__(self, emulator_pgid):
        self.pgid = emulator_pgid
        self.emu0 = group_cpu_seconds(emulator_pgid)
        self.mach0 = machine_ticks()
        self.t0 = time.monotonic()

    def stop(self, consumer_cpu):
        wall = max(time.monotonic() - self.t0, 1e-3)
        busy, total = (b - a for a, b in zip(self.mach0, machine_ticks()))
        return {
            "consumer": consumer_cpu / wall,                  # cores
            "emulator": (group_cpu_seconds(self.pgid) - self.emu0) / wall,
            "machine": os.cpu_count() * busy / max(total, 1),  # cores busy, all processes
        }


# ---- the emulator ------------------------------------------------------------------------

class Rest:
    """The emulator's REST API over one keep-alive connection (one per thread)."""

    def __init__(self, port):
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)

    def call(self, method, path, body=None):
        data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
        for attempt in (1, 2):  # one retry on a dropped keep-alive connection
            try:
                self.conn.request(method, path, body=data,
                                  headers={"Content-Type": "application/json"})
                r = self.conn.getresponse()
                payload = r.read()
                break
            except (http.client.HTTPException, OSError):
                self.conn.close()
                if attempt == 2:
                    raise
        if r.status >= 300:
            raise SetupError(f"emulator: {method} {path}: HTTP {r.status}: {payload[:300]!r}")
        return json.loads(payload or b"{}")

    def topic(self, name):
        self.call("PUT", f"/v1/projects/{PROJECT}/topics/{name}", {})
        return f"projects/{PROJECT}/topics/{name}"

    def subscription(self, name, topic):
        self.call("PUT", f"/v1/projects/{PROJECT}/subscriptions/{name}",
                  {"topic": topic, "ackDeadlineSeconds": 10})
        return f"projects/{PROJECT}/subscriptions/{name}"

    def publish(self, topic, body):
        """body: a publish request, as bytes (pre-encoded) or a dict."""
        return self.call("POST", f"/v1/{topic}:publish", body)


def publish_body(lines):
    return json.dumps({"messages": [{"data": base64.b64encode(l).decode()} for l in lines]}).encode()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_emulator():
    if not os.access(EMULATOR, os.X_OK):
        raise SetupError(f"{EMULATOR} not found (install google-cloud-cli-pubsub-emulator, or set PUBSUB_EMULATOR_BIN)")
    port = free_port()
    logf = open(f"{RUN_LOGS}/emulator.log", "w")
    p = spawn([EMULATOR, "--host=127.0.0.1", f"--port={port}"], stdout=logf, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if p.poll() is not None:
            raise SetupError(f"the emulator exited ({p.returncode}); see {RUN_LOGS}/emulator.log")
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            c.request("GET", "/")
            if c.getresponse().status == 200:
                c.close()
                return p, port
        except OSError:
            pass
        time.sleep(0.2)
    raise SetupError(f"the emulator did not answer on port {port} within 90 s")


# ---- data --------------------------------------------------------------------------------

def prepare_data(a):
    logs, jobdir = f"{DATA}/logs.ndjson", f"{DATA}/jobs"
    with open(GEN, "rb") as f:
        gen_sum = hashlib.sha256(f.read()).hexdigest()[:16]
    params = f"entries={a.entries} jobs={a.jobs} seed={a.seed} generator={gen_sum}"
    try:
        with open(f"{DATA}/params") as f:
            same = f.read().strip() == params
    except OSError:
        same = False
    if same and os.path.isfile(logs) and os.path.isfile(f"{jobdir}/jobs.json"):
        log(f"reusing {logs} ({params})")
    else:
        log(f"generating {logs} ({params})")
        for stale in (f"{DATA}/params", logs):
            if os.path.exists(stale):
                os.remove(stale)
        shutil.rmtree(jobdir, ignore_errors=True)
        r = subprocess.run([sys.executable, GEN, "--entries", str(a.entries), "--jobs", str(a.jobs),
                            "--seed", str(a.seed), "--out", logs, "--jobs-out", jobdir])
        if r.returncode != 0:
            raise SetupError(f"{GEN} failed ({r.returncode})")
        with open(f"{DATA}/params", "w") as f:
            f.write(params + "\n")
    with open(logs, "rb") as f:
        lines = [l.rstrip(b"\n") for l in f]
    if len(lines) != a.entries:
        raise SetupError(f"{logs} has {len(lines)} entries, expected {a.entries}")
    return logs, jobdir, lines


# ---- schedwatch --------------------------------------------------------------------------

class Schedwatch:
    """A running `schedwatch run`: stderr (and stdout, when watched) read by threads that
    timestamp each line; the stderr is also kept in a log file."""

    def __init__(self, name, subscription, jobdir, port, config_text, tmp, watch_stdout):
        self.name = name
        state = tempfile.mkdtemp(prefix=f"state-{name}-", dir=tmp)
        config = f"{tmp}/{name}.toml"
        with open(config, "w") as f:
            f.write(config_text)
        self.cmd = [BIN, "run", "--subscription", subscription, "--jobs", jobdir,
                    "--state", state, "--format", "json", "--config", config]
        self.alerts_path = f"{RUN_LOGS}/{name}-alerts.ndjson"
        self.stderr_path = f"{RUN_LOGS}/{name}-schedwatch.log"
        env = dict(os.environ, PUBSUB_EMULATOR_HOST=f"127.0.0.1:{port}", **SCHEDWATCH_ENV)
        self.lock = threading.Lock()
        self.batches = []          # (monotonic time, messages) per `batch processed` line
        self.processed = 0
        self.target = None         # (n, Event): set when processed reaches n
        self.reached_at = None
        self.summary = None        # the "entries read" line
        self.pulling = threading.Event()
        self.alerts = {}           # job id -> [(monotonic time, event)]
        self.alert_lines = 0
        self.on_alert = threading.Condition(self.lock)
        self.started = time.monotonic()
        self.p = spawn(self.cmd, env=env, stdin=subprocess.DEVNULL,
                       stdout=subprocess.PIPE if watch_stdout else open(self.alerts_path, "wb"),
                       stderr=subprocess.PIPE)
        threading.Thread(target=self._read_stderr, daemon=True).start()
        if watch_stdout:
            threading.Thread(target=self._read_stdout, daemon=True).start()

    def expect(self, n):
        self.target = (n, threading.Event())
        return self.target[1]

    def _read_stderr(self):
        with open(self.stderr_path, "w") as out:
            for raw in self.p.stderr:
                t = time.monotonic()
                line = ANSI.sub("", raw.decode("utf-8", "replace"))
                out.write(line)
                m = BATCH.search(line)
                if m:
                    with self.lock:
                        self.batches.append((t, int(m.group(1))))
                        self.processed += int(m.group(1))
                        if self.target and self.reached_at is None and self.processed >= self.target[0]:
                            self.reached_at = t
                            self.target[1].set()
                elif "entries read" in line:
                    self.summary = line.strip()
                elif " pulling" in line:
                    self.pulling.set()

    def _read_stdout(self):
        with open(self.alerts_path, "w") as out:
            for raw in self.p.stdout:
                t = time.monotonic()
                line = raw.decode("utf-8", "replace")
                out.write(line)
                try:
                    alert = json.loads(line)
                    job = alert["job"]["id"]
                except (ValueError, KeyError, TypeError):
                    continue
                with self.on_alert:
                    self.alert_lines += 1
                    self.alerts.setdefault(job, []).append((t, alert.get("event")))
                    self.on_alert.notify_all()

    def wait_alert(self, job, timeout):
        with self.on_alert:
            return self.on_alert.wait_for(lambda: job in self.alerts or self.p.poll() is not None,
                                          timeout) and job in self.alerts

    def stop(self):
        """SIGTERM, then wait for the drain; returns (exit status or None, summary line)."""
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
        rc, _ = wait_exit(self.p, 30)
        time.sleep(0.2)  # let the reader take the last lines
        return rc, self.summary

    def log_tail(self, n=8):
        try:
            with open(self.stderr_path) as f:
                return "".join(f.readlines()[-n:]).rstrip()
        except OSError:
            return ""


# ---- report ------------------------------------------------------------------------------

def machine():
    model = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
        with open("/proc/meminfo") as f:
            mem = int(f.readline().split()[1]) / 1048576
    except OSError:
        mem = 0
    return f"{os.cpu_count()} CPUs ({model}), {mem:.1f} GiB RAM, {os.uname().sysname} {os.uname().release}"


def revision():
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True).stdout.strip()
        rev += " with local changes" if dirty else ""
    except (OSError, subprocess.CalledProcessError):
        rev = "unknown revision"
    built = datetime.datetime.fromtimestamp(os.path.getmtime(BIN), datetime.timezone.utc)
    return f"{rev} (binary built {built.strftime('%Y-%m-%d %H:%M UTC')})"
