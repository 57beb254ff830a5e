#!/usr/bin/env python3
"""Generate a deterministic NDJSON file of Cloud Scheduler execution log entries for benchmarks.

The entries have exactly the shape of the samples in ../shared/fixtures/logs/ (the same
fields, keys in the same alphabetical order, one compact entry a line): one AttemptStarted and one
AttemptFinished per attempt, `logName`
`projects/P/logs/cloudscheduler.googleapis.com%2Fexecutions`, resource type
`cloud_scheduler_job` with labels `job_id`, `location`, `project_id`, 14-character insertIds,
`timestamp` in RFC 3339 with microseconds, strictly increasing through the file, and
`receiveTimestamp` with nanoseconds, a little after it.

The jobs are simulated, not sampled independently, so that incidents really open, repeat and
resolve. Every job has a cron-like period (1 minute to 1 hour), a retry count (0-5, each retry
logging its own pair, backoff 5 s doubling) and one behaviour:

  healthy        succeeds; rare 5xx/504/404
  broken-401     wrong auth config (OIDC to a Google API, OAuth to a non-Google target, no
                 token to a Google API, OIDC audience of another origin): 401 on every attempt
                 from the start of the window; about half get fixed at a random time
  broken-403     no token to a private Cloud Run service: 403, sometimes fixed
  invoker-403    right token, invoker role missing: 403 for a long stretch, then granted
  flapping       right config, 401 or 403 bursts of a few runs between successes
  noisy          non-auth failures only (5xx, timeouts, a deleted target's 404s)

With `--jobs-out DIR`, DIR/jobs.json is the job inventory as a REST list response
(`{"jobs": [...]}`) of Cloud Scheduler v1 Job resources, shaped like
../shared/fixtures/jobs/*.json, for about 90% of the jobs (the rest are missing, so
`auth-config-unavailable` happens too). It is the configuration as exported at the start of
the window: jobs fixed during the window still show their broken config there.

With `--distinct-failures`, every entry is instead an AttemptFinished 401 of a job that appears
nowhere else (10 ms apart, no inventory): the state-bound case, where every entry opens an
incident that never fires and never resolves (1,000,000 entries: 1,000,000 pending incidents
unless they are bounded).

All randomness derives from --seed, so the same arguments give the same bytes. Both files
are written as they are produced; only the job table (one small record per job) and the
pending-event queue (a few events per job) are held in memory (about 40 MB for 10,000 jobs).
A summary (bytes per entry, outcome mix, jobs by behaviour) goes to stderr.

Usage:
  gen_bench_logs.py --entries 1000000 --jobs 10000 --seed 1 --out bench-data/logs.ndjson \
                    --jobs-out bench-data/jobs
"""
import argparse
import heapq
import json
import os
import random
import sys
import time

# --- the fleet ------------------------------------------------------------------------------

# (project id, project number, locations): a few organisations' projects.
PROJECTS = [
    ("acme-data-prod", "543333616568", ["europe-west1", "us-east1"]),
    ("acme-web-prod", "771204559312", ["europe-west1"]),
    ("acme-ml-dev", "908114273650", ["us-central1"]),
    ("globex-billing", "214598803471", ["us-central1", "us-east1"]),
    ("globex-bi-prod", "330871926154", ["europe-west4"]),
    ("initech-prod", "662019384527", ["asia-northeast1", "us-central1"]),
]
# The short region code of legacy Cloud Run URLs (SERVICE-HASH-CODE.a.run.app).
REGION_CODE = {
    "europe-west1": "ew", "europe-west4": "ez", "us-central1": "uc", "us-east1": "ue",
    "asia-northeast1": "an",
}
TIME_ZONES = ["Etc/UTC", "Etc/UTC", "Etc/UTC", "Europe/Amsterdam", "Europe/London",
              "America/New_York", "America/Los_Angeles", "Asia/Tokyo"]

WORDS_A = ["nightly", "hourly", "daily", "weekly", "sync", "billing", "report", "export",
           "import", "cleanup", "refresh", "rollup", "ingest", "backfill", "reindex", "notify",
           "invoice", "audit", "metrics", "cache", "feed", "partner", "crm", "ledger"]
WORDS_B = ["etl", "worker", "orders", "users", "events", "catalog", "snapshots", "sessions",
           "payments", "alerts", "search", "emails", "exports", "leads", "stock", "prices",
           "tiles", "thumbnails", "accounts", "digest"]
WORDS_C = ["trigger", "job", "run", "cron", "task", "tick", "hourly", "daily"]
OTHER_HOSTS = ["hooks.partner.example", "api.acme.example", "internal.globex.example",
               "cron.initech.example", "ingest.vendor-saas.example", "erp.globex.example"]

# Cron schedules and their period in seconds, with weights (every minute is rare).
SCHEDULES = [("* * * * *", 60, 0.5), ("*/5 * * * *", 300, 5), ("*/10 * * * *", 600, 10),
             ("*/15 * * * *", 900, 15), ("*/30 * * * *", 1800, 30), ("0 * * * *", 3600, 39.5)]
RETRY_COUNTS = [(0, 40), (1, 10), (2, 5), (3, 30), (5, 15)]

# Behaviours and their share of jobs.
BEHAVIOURS = [("healthy", 54), ("broken-401", 8), ("broken-403", 1.5), ("invoker-403", 5),
              ("flapping", 11), ("noisy", 20)]

# Non-auth failures (HTTP status), weights.
NONAUTH = [(500, 30), (503, 30), (504, 20), (404, 20)]
# HTTP status -> (jsonPayload.status, the start of debugInfo), as in DOMAIN.md.
OUTCOME = {
    200: (None, "URL_CRAWLED"),
    204: (None, "URL_CRAWLED"),
    401: ("UNAUTHENTICATED", "URL_ERROR-ERROR_AUTHENTICATION"),
    403: ("PERMISSION_DENIED", "URL_ERROR-ERROR_OTHER"),
    404: ("NOT_FOUND", "URL_ERROR-ERROR_NOT_FOUND"),
    500: ("INTERNAL", "URL_UNREACHABLE-UNREACHABLE_5xx"),
    503: ("UNAVAILABLE", "URL_UNREACHABLE-UNREACHABLE_5xx"),
    504: ("DEADLINE_EXCEEDED", "URL_TIMEOUT-TIMEOUT_WEB"),
}
CLOUD_PLATFORM = "https://www.googleapis.com/auth/cloud-platform"
ATTEMPT_STARTED = "type.googleapis.com/google.cloud.scheduler.logging.AttemptStarted"
ATTEMPT_FINISHED = "type.googleapis.com/google.cloud.scheduler.logging.AttemptFinished"

# The window starts here (UTC, microseconds since the epoch).
START_US = 1772409600 * 1_000_000  # 2026-03-02T00:00:00Z
INSERT_ID_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789"


def weighted(rng, pairs):
    total = sum(w for _, w in pairs)
    x = rng.random() * total
    for value, w in pairs:
        x -= w
        if x < 0:
            return value
    return pairs[-1][0]


class Job:
    """One scheduler job: identity, target, auth config, schedule and simulated behaviour."""
    __slots__ = ("project", "number", "location", "job_id", "url", "kind", "token", "sa",
                 "audience", "scope", "schedule", "period", "retries", "behaviour", "fail_cls",
                 "fail_until", "flap_state", "noise", "in_inventory", "tz", "body",
                 "description", "started_parts", "finished_parts", "base_ok", "dead_404")


def hash10(rng):
    return "".join(rng.choice("abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(10))


def make_target(rng, kind, project, number, location, job_id, stem):
    """-> the target URL for a job of that kind."""
    if kind == "run-v1":
        return (f"https://{location}-run.googleapis.com/apis/run.googleapis.com/v1/"
                f"namespaces/{project}/jobs/{stem}:run")
    if kind == "run-v2":
        return f"https://run.googleapis.com/v2/projects/{project}/locations/{location}/jobs/{stem}:run"
    if kind == "google-other":
        return rng.choice([
            f"https://workflowexecutions.googleapis.com/v1/projects/{project}/locations/{location}/workflows/{stem}/executions",
            f"https://cloudbuild.googleapis.com/v1/projects/{project}/triggers/{stem}:run",
            f"https://dataflow.googleapis.com/v1b3/projects/{project}/locations/{location}/flexTemplates:launch",
        ])
    if kind == "run-app":
        svc = stem.split("-")[0] + "-api"
        path = rng.choice(["/tasks/", "/cron/", "/jobs/", "/internal/"]) + stem.split("-")[-1]
        if rng.random() < 0.6:
            return f"https://{svc}-{hash10(rng)}-{REGION_CODE[location]}.a.run.app{path}"
        return f"https://{svc}-{number}.{location}.run.app{path}"
    if kind == "functions":
        return f"https://{location}-{project}.cloudfunctions.net/{stem.replace('-', '_')}"
    host = rng.choice(OTHER_HOSTS)
    return f"https://{host}/{rng.choice(['cron', 'hooks', 'v1/tasks'])}/{stem}"


def origin(url):
    scheme, rest = url.split("://", 1)
    return f"{scheme}://{rest.split('/', 1)[0]}"


def make_jobs(rng, n):
    """Deterministically build n jobs with unique (project, location, job_id)."""
    jobs, used = [], set()
    places = [(p, num, loc) for p, num, locs in PROJECTS for loc in locs]
    for i in range(n):
        j = Job()
        j.project, j.number, j.location = rng.choice(places)
        while True:
            stem = f"{rng.choice(WORDS_A)}-{rng.choice(WORDS_B)}"
            job_id = f"{stem}-{rng.choice(WORDS_C)}" if rng.random() < 0.5 else stem
            if rng.random() < 0.1 or (j.project, j.location, job_id) in used:
                job_id = f"{job_id}-{rng.randrange(1, 10000)}"
            if (j.project, j.location, job_id) not in used:
                break
        used.add((j.project, j.location, job_id))
        j.job_id = job_id
        j.behaviour = weighted(rng, BEHAVIOURS)
        j.schedule, j.period = weighted(rng, [((s, p), w) for s, p, w in SCHEDULES])
        j.retries = weighted(rng, RETRY_COUNTS)
        if j.period <= 300:
            j.retries = min(j.retries, 1)  # retries would run into the next run
        j.tz = rng.choice(TIME_ZONES)
        j.in_inventory = rng.random() < 0.9
        j.noise = 0.05
        j.fail_cls = None
        j.fail_until = None
        j.flap_state = False
        j.dead_404 = False
        j.base_ok = 204 if rng.random() < 0.1 else 200
        j.description = (f"Triggers {stem}" if rng.random() < 0.3 else None)
        sa = rng.choice([f"scheduler-invoker@{j.project}.iam.gserviceaccount.com",
                         f"{j.number}-compute@developer.gserviceaccount.com",
                         f"sched-{stem.split('-')[0]}@{j.project}.iam.gserviceaccount.com"])
        j.sa, j.audience, j.scope, j.token = sa, None, None, "none"
        b = j.behaviour
        if b == "broken-401":
            # A config that schedwatch can confirm (or, for the audience, call likely).
            how = weighted(rng, [("oidc-google", 50), ("oauth-nongoogle", 20),
                                 ("none-google", 15), ("audience", 15)])
            if how == "oidc-google":
                kind = weighted(rng, [("run-v1", 60), ("run-v2", 30), ("google-other", 10)])
                j.token = "oidc"
            elif how == "oauth-nongoogle":
                kind = weighted(rng, [("run-app", 60), ("functions", 25), ("other", 15)])
                j.token = "oauth"
            elif how == "none-google":
                kind = weighted(rng, [("run-v1", 50), ("run-v2", 50)])
            else:
                kind = weighted(rng, [("run-app", 80), ("functions", 20)])
                j.token = "oidc"
            j.fail_cls = 401
        elif b == "broken-403":
            kind = "run-app"  # no token to a private Cloud Run service: 403 (seen)
            j.fail_cls = 403
        else:
            # A right config: OAuth to Google APIs, OIDC to everything else.
            kind = weighted(rng, [("run-v1", 25), ("run-v2", 15), ("google-other", 5),
                                 ("run-app", 28), ("functions", 12), ("other", 15)])
            if kind in ("run-v1", "run-v2", "google-other"):
                j.token = "oauth"
            elif kind == "other" and rng.random() < 0.5:
                j.token = "none"  # a public webhook
            else:
                j.token = "oidc"
        j.kind = kind
        j.url = make_target(rng, kind, j.project, j.number, j.location, job_id, stem)
        if j.token == "oauth":
            j.scope = CLOUD_PLATFORM
        elif j.token == "oidc":
            if b == "broken-401" and how == "audience":
                # A custom domain, or another URL form of the same Cloud Run service.
                host = origin(j.url)[len("https://"):]
                if host.endswith(".a.run.app"):
                    svc = host.rsplit("-", 2)[0]
                    other_form = f"https://{svc}-{j.number}.{j.location}.run.app"
                elif host.endswith(".run.app"):
                    svc = host.split(".")[0].rsplit("-", 1)[0]
                    other_form = f"https://{svc}-{hash10(rng)}-{REGION_CODE[j.location]}.a.run.app"
                else:
                    other_form = f"https://{stem.split('-')[0]}.{j.project.split('-')[0]}.example"
                j.audience = rng.choice([other_form,
                                         f"https://{stem.split('-')[0]}.{j.project.split('-')[0]}.example"])
            else:
                j.audience = rng.choice([origin(j.url), origin(j.url), j.url, None])
        j.body = "e30=" if kind == "run-v2" else None
        # Behaviour over time.
        if b in ("broken-401", "broken-403"):
            # Broken from the start; about half get fixed at some point in the window.
            j.fail_until = "frac:" + (f"{rng.uniform(0.05, 0.95):.4f}" if rng.random() < 0.5 else "2")
        elif b == "invoker-403":
            j.fail_cls = 403
            a = rng.uniform(0.0, 0.7)
            j.fail_until = f"span:{a:.4f}:{min(1.5, a + rng.uniform(0.1, 0.8)):.4f}"
        elif b == "flapping":
            j.fail_cls = 401 if rng.random() < 0.6 else 403
        elif b == "noisy":
            j.noise = rng.uniform(0.4, 0.8)
            j.dead_404 = rng.random() < 0.15
        jobs.append(j)
    return jobs


def finalize_windows(jobs, span_us):
    """Turn the fractions chosen in make_jobs into absolute failing windows (µs)."""
    for j in jobs:
        f = j.fail_until
        if f is None:
            continue
        if f.startswith("frac:"):
            j.fail_until = (START_US, START_US + int(float(f[5:]) * span_us))
        else:
            _, a, b = f.split(":")
            j.fail_until = (START_US + int(float(a) * span_us), START_US + int(float(b) * span_us))


def prepare_templates(j):
    """Precompute the JSON text around the per-entry fields (all values JSON-encoded)."""
    d = json.dumps
    job_name = f"projects/{j.project}/locations/{j.location}/jobs/{j.job_id}"
    log_name = f"projects/{j.project}/logs/cloudscheduler.googleapis.com%2Fexecutions"
    resource = (f'"resource":{{"type":"cloud_scheduler_job","labels":{{"job_id":{d(j.job_id)},'
                f'"location":{d(j.location)},"project_id":{d(j.project)}}}}}')
    j.started_parts = (f'"jsonPayload":{{"@type":"{ATTEMPT_STARTED}","jobName":{d(job_name)},'
                        f'"scheduledTime":"', f'","targetType":"HTTP","url":{d(j.url)}}},'
                        f'"logName":{d(log_name)},"receiveTimestamp":"',
                        f'",{resource},"severity":"INFO","timestamp":"')
    j.finished_parts = (f'"jsonPayload":{{"@type":"{ATTEMPT_FINISHED}","debugInfo":"',
                         f'","jobName":{d(job_name)},"targetType":"HTTP","url":{d(j.url)}',
                         f'}},"logName":{d(log_name)},"receiveTimestamp":"',
                         f'",{resource},"severity":"')


class Clock:
    """Formats µs timestamps; caches the date-time part of the current second."""

    def __init__(self):
        self.sec = None
        self.text = None

    def base(self, us):
        s = us // 1_000_000
        if s != self.sec:
            self.sec = s
            self.text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(s))
        return self.text

    def micros(self, us):
        return f"{self.base(us)}.{us % 1_000_000:06d}Z"

    def nanos(self, us, extra_ns):
        return f"{self.base(us)}.{us % 1_000_000:06d}{extra_ns:03d}Z"


def outcome(rng, j, t_us, retry):
    """-> HTTP status of the attempt at t_us (retry: index of this retry, 0 for the run)."""
    if j.dead_404:
        return 404
    if j.fail_until is not None:
        a, b = j.fail_until
        if a <= t_us < b:
            return j.fail_cls if rng.random() > 0.02 else 503
    if j.behaviour == "flapping":
        if retry == 0:
            # A sticky two-state chain: bursts of failing runs between good ones.
            j.flap_state = rng.random() < (0.75 if j.flap_state else 0.3)
        if j.flap_state and (retry == 0 or rng.random() < 0.7):
            return j.fail_cls
    if rng.random() < j.noise:
        return weighted(rng, NONAUTH)
    return j.base_ok


def simulate(rng, jobs, entries, out):
    """Write `entries` log lines to `out` in timestamp order.

    -> (span of the events in µs, finished attempts by HTTP status, bytes written)"""
    clock = Clock()
    insert_chars = INSERT_ID_ALPHABET
    heap = []
    # Each job's first run falls somewhere in its first period; runs then follow the period.
    for i, j in enumerate(jobs):
        first = START_US + rng.randrange(0, j.period) * 1_000_000
        # (time µs, kind: 0 run due / 1 Started / 2 Finished, job index, retry, extra)
        heapq.heappush(heap, (first, 0, i, 0, 0))
    last = 0
    written = 0
    stats = {}
    bytes_out = 0
    write = out.write
    choices = rng.choices
    while written < entries:
        t, kind, i, retry, extra = heapq.heappop(heap)
        j = jobs[i]
        if kind == 0:
            # A run (or a retry) is due: it is dispatched a little later (sub-second jitter
            # for scheduled runs), and Started is logged shortly after.
            if retry == 0:
                heapq.heappush(heap, (t + j.period * 1_000_000, 0, i, 0, 0))
            scheduled = t + rng.randrange(0, 1_000_000) if retry == 0 else t
            started = scheduled + rng.randrange(60_000, 900_000)
            heapq.heappush(heap, (started, 1, i, retry, scheduled))
            continue
        # Strictly increasing timestamps through the file.
        if t <= last:
            t = last + rng.randrange(1, 40)
        last = t
        iid = "".join(choices(insert_chars, k=14))
        if kind == 1:
            scheduled = extra
            status = outcome(rng, j, t, retry)
            latency = (rng.randrange(150_000, 4_000_000) if status != 504
                       else 180_000_000 + rng.randrange(0, 900_000))
            heapq.heappush(heap, (t + latency, 2, i, retry, status))
            recv = t + rng.randrange(20_000, 2_500_000)
            pre = j.started_parts
            line = (f'{{"insertId":"{iid}",{pre[0]}{clock.micros(scheduled)}{pre[1]}'
                    f'{clock.nanos(recv, rng.randrange(1000))}{pre[2]}{clock.micros(t)}"}}\n')
        else:
            status = extra
            grpc, debug = OUTCOME[status]
            stats[status] = stats.get(status, 0) + 1
            recv = t + rng.randrange(2_000, 3_000_000)
            suf = j.finished_parts
            status_field = f',"status":"{grpc}"' if grpc else ""
            line = (f'{{"httpRequest":{{"status":{status}}},"insertId":"{iid}",{suf[0]}{debug}. '
                    f'Original HTTP response code number = {status}{suf[1]}{status_field}{suf[2]}'
                    f'{clock.nanos(recv, rng.randrange(1000))}{suf[3]}'
                    f'{"ERROR" if grpc else "INFO"}","timestamp":"{clock.micros(t)}"}}\n')
            if grpc and retry < j.retries:
                backoff = min(5 * 2 ** retry, 3600) * 1_000_000
                heapq.heappush(heap, (t + backoff, 0, i, retry + 1, 0))
        write(line)
        bytes_out += len(line)
        written += 1
    return last - START_US, stats, bytes_out


def simulate_distinct(rng, entries, out):
    """Write `entries` AttemptFinished 401 lines, each of its own job, 10 ms apart.

    -> (span of the events in µs, finished attempts by HTTP status, bytes written)"""
    clock = Clock()
    write = out.write
    bytes_out = 0
    t = START_US
    for n in range(entries):
        project, _, locations = PROJECTS[n % len(PROJECTS)]
        location = locations[n % len(locations)]
        job_id = f"{rng.choice(WORDS_A)}-{rng.choice(WORDS_B)}-{n}"
        iid = "".join(rng.choices(INSERT_ID_ALPHABET, k=14))
        job_name = f"projects/{project}/locations/{location}/jobs/{job_id}"
        line = (f'{{"httpRequest":{{"status":401}},"insertId":"{iid}","jsonPayload":{{'
                f'"@type":"{ATTEMPT_FINISHED}","debugInfo":"URL_ERROR-ERROR_AUTHENTICATION. '
                f'Original HTTP response code number = 401","jobName":"{job_name}",'
                f'"status":"UNAUTHENTICATED","targetType":"HTTP",'
                f'"url":"https://{job_id}-4x7qk2m9da-ue.a.run.app/cron"}},'
                f'"logName":"projects/{project}/logs/cloudscheduler.googleapis.com%2Fexecutions",'
                f'"receiveTimestamp":"{clock.nanos(t + 40_000, 0)}","resource":{{'
                f'"labels":{{"job_id":"{job_id}","location":"{location}","project_id":"{project}"}},'
                f'"type":"cloud_scheduler_job"}},"severity":"ERROR","timestamp":"{clock.micros(t)}"}}\n')
        write(line)
        bytes_out += len(line)
        t += 10_000
    return t - START_US, {401: entries}, bytes_out


def write_inventory(rng, jobs, directory, span_us):
    """Stream DIR/jobs.json: {"jobs": [...]} with the Job resources of the inventoried jobs."""
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, "jobs.json")
    clock = Clock()
    count = 0
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        f.write('{\n  "jobs": [')
        first = True
        for j in jobs:
            if not j.in_inventory:
                continue
            target = {"uri": j.url, "httpMethod": "POST",
                      "headers": {"User-Agent": "Google-Cloud-Scheduler"}}
            if j.body:
                target["headers"]["Content-Type"] = "application/json"
                target["body"] = j.body
            if j.token == "oidc":
                tok = {"serviceAccountEmail": j.sa}
                if j.audience:
                    tok["audience"] = j.audience
                target["oidcToken"] = tok
            elif j.token == "oauth":
                target["oauthToken"] = {"serviceAccountEmail": j.sa, "scope": j.scope}
            job = {"name": f"projects/{j.project}/locations/{j.location}/jobs/{j.job_id}"}
            if j.description:
                job["description"] = j.description
            job["httpTarget"] = target
            job["userUpdateTime"] = clock.micros(START_US - rng.randrange(3600, 90 * 86400) * 1_000_000)
            job["state"] = "ENABLED"
            broken = j.behaviour in ("broken-401", "broken-403")
            job["status"] = ({"code": 16 if j.fail_cls == 401 else 7}
                             if broken and rng.random() < 0.7 else {})
            job["scheduleTime"] = clock.micros(START_US + span_us + rng.randrange(j.period) * 1_000_000)
            job["lastAttemptTime"] = clock.micros(START_US + span_us - rng.randrange(j.period) * 1_000_000)
            retry = {"maxBackoffDuration": "3600s", "maxDoublings": 5, "maxRetryDuration": "0s",
                     "minBackoffDuration": "5s"}
            if j.retries:
                retry["retryCount"] = j.retries
            job["retryConfig"] = retry
            job["attemptDeadline"] = "180s"
            job["schedule"] = j.schedule
            job["timeZone"] = j.tz
            text = json.dumps(job, indent=2)
            f.write(("\n    " if first else ",\n    ") + text.replace("\n", "\n    "))
            first = False
            count += 1
        f.write("\n  ]\n}\n")
    os.replace(path + ".tmp", path)
    return path, count


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--entries", type=int, default=1_000_000, help="log entries (default 1000000)")
    ap.add_argument("--jobs", type=int, default=10_000, help="scheduler jobs (default 10000)")
    ap.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    ap.add_argument("--out", required=True, help="NDJSON output file ('-' for stdout)")
    ap.add_argument("--jobs-out", metavar="DIR", help="also write the inventory DIR/jobs.json")
    ap.add_argument("--quiet", action="store_true", help="no summary on stderr")
    ap.add_argument("--distinct-failures", action="store_true",
                    help="every entry a 401 of a job of its own (no --jobs, no inventory)")
    a = ap.parse_args(argv)
    if a.entries < 1 or a.jobs < 1:
        ap.error("--entries and --jobs must be positive")
    if a.jobs > 400_000:
        ap.error("--jobs: at most 400000 (job names would run out)")

    rng = random.Random(a.seed)
    sim_rng = random.Random(a.seed * 7919 + 17)
    if a.distinct_failures:
        jobs = []
        run = lambda out: simulate_distinct(sim_rng, a.entries, out)
    else:
        jobs = make_jobs(rng, a.jobs)
        # The window's length follows from the fleet's attempt rate (runs plus retries,
        # roughly), so every job gets about entries/jobs/2 attempts whatever the sizes.
        runs_per_s = sum(1 / j.period for j in jobs) * 1.25
        span_us = int(a.entries / 2 / runs_per_s * 1_000_000)
        finalize_windows(jobs, span_us)
        for j in jobs:
            prepare_templates(j)
        run = lambda out: simulate(sim_rng, jobs, a.entries, out)

    t0 = time.monotonic()
    if a.out == "-":
        span, stats, nbytes = run(sys.stdout)
    else:
        os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
        with open(a.out + ".tmp", "w", encoding="utf-8", buffering=1 << 20) as out:
            span, stats, nbytes = run(out)
        os.replace(a.out + ".tmp", a.out)
    inv = None
    if a.jobs_out and not a.distinct_failures:
        inv = write_inventory(random.Random(a.seed * 31 + 5), jobs, a.jobs_out, span)

    if not a.quiet:
        finished = sum(stats.values())
        share = lambda *codes: 100.0 * sum(stats.get(c, 0) for c in codes) / max(1, finished)
        kinds = {}
        for j in jobs:
            kinds[j.behaviour] = kinds.get(j.behaviour, 0) + 1
        print(f"wrote {a.entries} entries ({nbytes / a.entries:.0f} bytes/entry on average, "
              f"{nbytes / 1e6:.1f} MB) over {a.entries if a.distinct_failures else a.jobs} jobs, {span / 3.6e9:.1f} h of events, "
              f"in {time.monotonic() - t0:.1f} s", file=sys.stderr)
        print(f"finished attempts: {finished}; success {share(200, 204):.1f}%, "
              f"401 {share(401):.1f}%, 403 {share(403):.1f}%, "
              f"404/5xx {share(404, 500, 503, 504):.1f}%", file=sys.stderr)
        print("jobs by behaviour: " + ", ".join(f"{k} {v}" for k, v in sorted(kinds.items())),
              file=sys.stderr)
        if inv:
            print(f"inventory: {inv[0]} ({inv[1]} of {a.jobs} jobs)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
