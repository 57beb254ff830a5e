#!/usr/bin/env python3
"""Writes the scenario folders under tests/scenarios/ (python3, standard library, deterministic).

  python3 scripts/make_scenarios.py [--check]

Each folder has the layout of ../shared/examples/*:

  README.md        one line: what the scenario tests
  logs.ndjson      the log entries (or logs.json: a `gcloud logging read --format=json` array,
                   or logs.pubsub.json: Pub/Sub pull responses or push envelopes, one a line)
  jobs/*.json      the job inventory (Cloud Scheduler v1 Job JSON)
  expected.json    {"alerts": [...], "audit": {...}}, computed by ../shared/tools/reference.py,
                   never written by hand

Every scenario also states what its author expects (`want`); the script stops when the
reference model disagrees, so a scenario cannot silently stop testing what its README says.
`--check` writes nothing and fails when a folder on disk differs from what would be written.
tests/it/scenarios.rs runs the schedwatch binary over every folder.
"""
import base64
import hashlib
import json
import os
import shutil
import sys
import tempfile
from datetime import datetime, timedelta, timezone

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
SHARED = os.environ.get("SCHEDWATCH_SHARED", os.path.join(ROOT, "..", "shared"))
sys.path.insert(0, os.path.join(SHARED, "tools"))
import reference  # noqa: E402  (../shared/tools/reference.py)

OUT = os.path.join(ROOT, "tests", "scenarios")

CLOUD_PLATFORM = "https://www.googleapis.com/auth/cloud-platform"
FINISHED = "type.googleapis.com/google.cloud.scheduler.logging.AttemptFinished"
STARTED = "type.googleapis.com/google.cloud.scheduler.logging.AttemptStarted"

# HTTP status -> (jsonPayload.status, debugInfo prefix); DOMAIN.md's outcome table.
OUTCOMES = {
    200: (None, "URL_CRAWLED"),
    204: (None, "URL_CRAWLED"),
    401: ("UNAUTHENTICATED", "URL_ERROR-ERROR_AUTHENTICATION"),
    403: ("PERMISSION_DENIED", "URL_ERROR-ERROR_OTHER"),
    404: ("NOT_FOUND", "URL_ERROR-ERROR_NOT_FOUND"),
    500: ("INTERNAL", "URL_UNREACHABLE-UNREACHABLE_5xx"),
    503: ("UNAVAILABLE", "URL_UNREACHABLE-UNREACHABLE_5xx"),
    504: ("DEADLINE_EXCEEDED", "URL_TIMEOUT-TIMEOUT_WEB"),
}

B36 = "0123456789abcdefghijklmnopqrstuvwxyz"


def ts(dt):
    """RFC 3339 with microseconds and Z: what reference.parse_ts needs, as Cloud Logging prints."""
    return dt.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def at(day, hh, mm=0, ss=0, us=0):
    return datetime(2026, 11, day, hh, mm, ss, us, tzinfo=timezone.utc)


def digest(*parts):
    return hashlib.sha256("/".join(str(p) for p in parts).encode()).digest()


def b64(obj):
    raw = obj if isinstance(obj, bytes) else json.dumps(obj, separators=(",", ":")).encode()
    return base64.b64encode(raw).decode()


def compact(obj):
    return json.dumps(obj, separators=(",", ":"))


# ---------------------------------------------------------------------------------------------
# Jobs


class Job:
    """A Cloud Scheduler job: its key, what its logs say it calls, and its config (or None when
    the inventory does not have it)."""

    def __init__(self, project, location, job_id, config, url=None, target_type="HTTP", topic=None):
        self.project, self.location, self.job_id = project, location, job_id
        self.config = config
        self.url = url
        self.target_type = target_type
        self.topic = topic

    @property
    def name(self):
        return f"projects/{self.project}/locations/{self.location}/jobs/{self.job_id}"

    @property
    def key(self):
        return f"{self.project}/{self.location}/{self.job_id}"

    def file_name(self):
        return f"{self.project}--{self.job_id}.json"


def _job_doc(name, target_key, target, schedule, state="ENABLED", status=None, retry_count=3, extra=None):
    doc = {"name": name}
    doc.update(extra or {})
    doc[target_key] = target
    doc.update({
        "userUpdateTime": "2026-10-01T09:00:00.000000Z",
        "state": state,
        "status": status if status is not None else {},
        "retryConfig": {
            "maxBackoffDuration": "3600s",
            "maxDoublings": 5,
            "maxRetryDuration": "0s",
            "minBackoffDuration": "5s",
            **({"retryCount": retry_count} if retry_count else {}),
        },
        "attemptDeadline": "180s",
        "schedule": schedule,
        "timeZone": "Etc/UTC",
    })
    return doc


def http_job(project, location, job_id, uri, token=None, sa=None, audience=None, body=None,
             schedule="*/10 * * * *", in_inventory=True, description=None, status=None):
    """An httpTarget job. token: None, "oidc" or "oauth"."""
    target = {"uri": uri, "httpMethod": "POST", "headers": {"User-Agent": "Google-Cloud-Scheduler"}}
    if body is not None:
        target["headers"]["Content-Type"] = "application/json"
        target["body"] = b64(body)
    if token == "oidc":
        target["oidcToken"] = {"serviceAccountEmail": sa, **({"audience": audience} if audience else {})}
    elif token == "oauth":
        target["oauthToken"] = {"serviceAccountEmail": sa, "scope": CLOUD_PLATFORM}
    name = f"projects/{project}/locations/{location}/jobs/{job_id}"
    extra = {"description": description} if description else None
    config = _job_doc(name, "httpTarget", target, schedule, status=status, extra=extra) if in_inventory else None
    return Job(project, location, job_id, config, url=uri)


def pubsub_job(project, location, job_id, topic, schedule="*/5 * * * *"):
    target = {"topicName": f"projects/{project}/topics/{topic}", "data": b64({"kind": topic}),
              "attributes": {"source": "scheduler"}}
    name = f"projects/{project}/locations/{location}/jobs/{job_id}"
    config = _job_doc(name, "pubsubTarget", target, schedule, retry_count=0)
    return Job(project, location, job_id, config, target_type="PUB_SUB", topic=target["topicName"])


def app_engine_job(project, location, job_id, service, relative_uri, schedule="every 24 hours"):
    host = f"prod.{service}.{project}.ew.r.appspot.com"
    target = {"httpMethod": "POST",
              "appEngineRouting": {"service": service, "version": "prod", "host": host},
              "relativeUri": relative_uri,
              "headers": {"User-Agent": "AppEngine-Google; (+http://code.google.com/appengine)"}}
    name = f"projects/{project}/locations/{location}/jobs/{job_id}"
    config = _job_doc(name, "appEngineHttpTarget", target, schedule)
    return Job(project, location, job_id, config, url=f"https://{host}{relative_uri}", target_type="APP_ENGINE_HTTP")


# ---------------------------------------------------------------------------------------------
# Log entries


class Log:
    """Makes real-shaped execution log entries with deterministic insertIds and latencies."""

    def __init__(self, scenario):
        self.scenario = scenario
        self.n = 0

    def insert_id(self):
        self.n += 1
        num = int.from_bytes(digest(self.scenario, self.n)[:9], "big")
        out = ""
        for _ in range(14):
            num, r = divmod(num, 36)
            out += B36[r]
        return out

    def _jitter_ms(self, salt, lo, hi):
        return lo + int.from_bytes(digest(self.scenario, self.n, salt)[:4], "big") % (hi - lo)

    def _common(self, job, t, severity):
        iid = self.insert_id()
        receive = t + timedelta(milliseconds=self._jitter_ms("recv", 40, 900))
        return {
            "insertId": iid,
            "logName": f"projects/{job.project}/logs/cloudscheduler.googleapis.com%2Fexecutions",
            "receiveTimestamp": ts(receive),
            "resource": {"type": "cloud_scheduler_job",
                         "labels": {"job_id": job.job_id, "location": job.location, "project_id": job.project}},
            "timestamp": ts(t),
            "severity": severity,
        }

    def _where(self, job):
        if job.target_type == "PUB_SUB":
            return {"pubsubTopic": job.topic}
        return {"url": job.url}

    def started(self, job, t, scheduled=None):
        e = self._common(job, t, "INFO")
        e["jsonPayload"] = {"@type": STARTED, "jobName": job.name,
                            "scheduledTime": ts(scheduled or (t - timedelta(seconds=5))),
                            "targetType": job.target_type, **self._where(job)}
        return e

    def finished(self, job, t, http):
        status, prefix = OUTCOMES[http]
        e = self._common(job, t, "ERROR" if status else "INFO")
        payload = {"@type": FINISHED, "debugInfo": f"{prefix}. Original HTTP response code number = {http}",
                   "jobName": job.name, "targetType": job.target_type, **self._where(job)}
        if status:
            payload["status"] = status
        e["jsonPayload"] = payload
        e["httpRequest"] = {"status": http}
        if job.target_type == "PUB_SUB":
            # A Pub/Sub target has no HTTP exchange: the outcome is the status alone.
            del e["httpRequest"]
            payload["debugInfo"] = f"{prefix}. Publishing to {job.topic}"
            if not status:
                del payload["debugInfo"]
        return e

    def attempt(self, job, t, http, started=True, latency_ms=None):
        """One attempt: AttemptStarted at t, AttemptFinished after the target's latency."""
        out = [self.started(job, t)] if started else []
        ms = latency_ms if latency_ms is not None else self._jitter_ms("lat", 150, 2500)
        out.append(self.finished(job, t + timedelta(milliseconds=ms), http))
        return out

    def run(self, job, t, outcomes, started=True):
        """One scheduled run with retries: the first attempt at t, retries after 5 s, 10 s, 20 s..."""
        out, delay = [], 0
        for i, http in enumerate(outcomes):
            out += self.attempt(job, t + timedelta(seconds=delay), http, started)
            delay += 5 * 2 ** i + 1
        return out


def by_time(entries):
    return sorted(entries, key=lambda e: e["timestamp"])


def finished_only(entries):
    return [e for e in entries if e["jsonPayload"]["@type"] == FINISHED]


def message(entry, n, scenario):
    mid = str(11873264598800000 + int.from_bytes(digest(scenario, "msg", n)[:4], "big"))
    publish = reference.parse_ts(entry["timestamp"]) + timedelta(milliseconds=700)
    return {"data": b64(entry),
            "attributes": {"logging.googleapis.com/timestamp": entry["timestamp"]},
            "messageId": mid,
            "publishTime": publish.strftime("%Y-%m-%dT%H:%M:%S.") + f"{publish.microsecond // 1000:03d}Z"}


def pull_response(entries, scenario, first_n):
    received = []
    for i, e in enumerate(entries):
        ack = base64.b64encode(digest(scenario, "ack", first_n + i)[:33]).decode().replace("/", "_").replace("+", "-")
        received.append({"ackId": ack, "message": message(e, first_n + i, scenario)})
    return {"receivedMessages": received}


def push_envelope(entry, n, scenario, subscription):
    m = message(entry, n, scenario)
    m["message_id"], m["publish_time"] = m["messageId"], m["publishTime"]
    return {"message": m, "subscription": subscription}


# ---------------------------------------------------------------------------------------------
# Scenarios


class Scenario:
    def __init__(self, name, readme, jobs, logs, want, fmt="ndjson", job_files=None, want_audit=None):
        """logs: items in file order (entries, or Pub/Sub documents for fmt "pubsub").
        fmt: "ndjson" (logs.ndjson), "array" (logs.json, printed as given: newest first), or
        "pubsub" (logs.pubsub.json, one document a line). job_files: {file name: document}
        when the inventory is not one file per job. want: the (job_id, event, code, count)
        the author expects; want_audit: {job_id: [codes]} for the jobs with findings."""
        self.name, self.readme, self.jobs, self.logs, self.want = name, readme, jobs, logs, want
        self.fmt, self.job_files, self.want_audit = fmt, job_files, want_audit or {}
        assert self.entry_count() < 100, f"{name}: {self.entry_count()} entries, keep it under 100"

    def entry_count(self):
        if self.fmt == "pubsub":
            return sum(len(d.get("receivedMessages", [])) if "receivedMessages" in d else 1 for d in self.logs)
        return len(self.logs)

    def logs_name(self):
        return {"ndjson": "logs.ndjson", "array": "logs.json", "pubsub": "logs.pubsub.json"}[self.fmt]

    def write(self, folder):
        os.makedirs(os.path.join(folder, "jobs"))
        with open(os.path.join(folder, "README.md"), "w") as f:
            f.write(self.readme.strip() + "\n")
        files = self.job_files
        if files is None:
            files = {j.file_name(): j.config for j in self.jobs if j.config is not None}
        if not files:
            files = {"none.json": []}
        for fname, doc in sorted(files.items()):
            with open(os.path.join(folder, "jobs", fname), "w") as f:
                f.write(json.dumps(doc, indent=2) + "\n")
        logs = os.path.join(folder, self.logs_name())
        with open(logs, "w") as f:
            if self.fmt == "array":
                # What `gcloud logging read --format=json` prints: keys sorted, indented.
                f.write(json.dumps(self.logs, indent=2, sort_keys=True) + "\n")
            else:
                for item in self.logs:
                    f.write(compact(item) + "\n")
        entries = reference.read_entries(logs)
        inventory = reference.load_inventory(os.path.join(folder, "jobs"))
        alerts = reference.reference(entries, inventory)
        audit = {"/".join(k): reference.audit_findings(v) for k, v in sorted(inventory.items())}
        with open(os.path.join(folder, "expected.json"), "w") as f:
            f.write(json.dumps({"alerts": alerts, "audit": audit}, indent=2) + "\n")
        self._self_check(alerts, audit)

    def _self_check(self, alerts, audit):
        got = [(a["job"].split("/")[2], a["event"], a["code"], a["count"]) for a in alerts]
        if sorted(got) != sorted(self.want):
            raise SystemExit(f"{self.name}: the reference model gives {got}, the scenario expects {self.want}")
        got_audit = {k.split("/")[2]: v for k, v in audit.items() if v}
        if got_audit != self.want_audit:
            raise SystemExit(f"{self.name}: reference audit {got_audit}, the scenario expects {self.want_audit}")


P = "acme-data-prod"
SA = "scheduler-invoker@acme-data-prod.iam.gserviceaccount.com"
ETL_SA = "etl-runner@acme-data-prod.iam.gserviceaccount.com"
REPORTS_SA = "reports-invoker@acme-data-prod.iam.gserviceaccount.com"
RUN_APP = "https://report-api-4x7qk2m9da-ew.a.run.app"


def v1_run_job(region, project, job):
    return f"https://{region}-run.googleapis.com/apis/run.googleapis.com/v1/namespaces/{project}/jobs/{job}:run"


def v2_run_job(region, project, job):
    return f"https://run.googleapis.com/v2/projects/{project}/locations/{region}/jobs/{job}:run"


def s_oidc_v2():
    name = "oidc-to-googleapis-v2-run-job"
    log = Log(name)
    job = http_job(P, "europe-west1", "hourly-rollup-trigger", v2_run_job("europe-west1", P, "hourly-rollup"),
                   token="oidc", sa=ETL_SA, audience=v2_run_job("europe-west1", P, "hourly-rollup"),
                   body={}, schedule="0 * * * *", status={"code": 16})
    logs = []
    for h in (9, 10, 11):  # each hourly run fails, with its three retries
        logs += log.run(job, at(20, h), [401, 401, 401, 401])
    logs += log.run(job, at(20, 12), [200])
    return Scenario(name, "OIDC token to the Cloud Run Admin API v2 (run.googleapis.com/v2/...:run) with retries: "
                    "rule 3 confirms it, so the first 401 fires; the first success after 12 failures resolves.",
                    [job], logs,
                    want=[("hourly-rollup-trigger", "firing", "oidc-token-for-google-api", 1),
                          ("hourly-rollup-trigger", "resolved", "oidc-token-for-google-api", 12)],
                    want_audit={"hourly-rollup-trigger": ["oidc-token-for-google-api"]})


def s_oauth_run_app():
    name = "oauth-to-run-app-service"
    log = Log(name)
    job = http_job(P, "europe-west1", "report-rollup-oauth", f"{RUN_APP}/tasks/rollup", token="oauth", sa=REPORTS_SA)
    logs = []
    for m in range(0, 50, 10):
        logs += log.attempt(job, at(20, 8, m), 401)
    return Scenario(name, "OAuth token to a Cloud Run service on run.app (rule 4): confirmed, fires at the first 401 "
                    "and stays open while it keeps failing (no repeat within 4 h).",
                    [job], logs,
                    want=[("report-rollup-oauth", "firing", "oauth-token-for-non-google-target", 1)],
                    want_audit={"report-rollup-oauth": ["oauth-token-for-non-google-target"]})


def s_no_token_googleapis():
    name = "no-token-to-googleapis"
    log = Log(name)
    uri = v1_run_job("europe-west1", P, "nightly-etl")
    job = http_job(P, "europe-west1", "nightly-etl-trigger", uri, schedule="0 2 * * *",
                   description="Triggers Cloud Run job nightly-etl")
    logs = log.run(job, at(20, 2), [401, 401, 401, 401])
    logs += log.run(job, at(21, 2), [401, 401])
    logs += log.run(job, at(21, 2, 30), [200])  # someone added the token and ran it by hand
    return Scenario(name, "No token at all to the Cloud Run Admin API (rule 2): the config confirms it, the first 401 "
                    "fires, the next night's failure (over 4 h later) repeats, and a success resolves after 6.",
                    [job], logs,
                    want=[("nightly-etl-trigger", "firing", "missing-auth-token", 1),
                          ("nightly-etl-trigger", "repeat", "missing-auth-token", 5),
                          ("nightly-etl-trigger", "resolved", "missing-auth-token", 6)],
                    want_audit={"nightly-etl-trigger": ["missing-auth-token"]})


def s_no_token_webhook():
    name = "no-token-plain-webhook"
    log = Log(name)
    job = http_job(P, "us-east1", "partner-sync", "https://hooks.partner.example/ingest", schedule="*/15 * * * *")
    ok = http_job(P, "us-east1", "status-ping", "https://status.acme.example/ping", schedule="*/15 * * * *")
    logs = []
    for i, m in enumerate(range(0, 60, 15)):
        logs += log.attempt(ok, at(20, 9, m, 2), 200)
        logs += log.attempt(job, at(20, 9, m), 401 if i < 3 else 500)
    return Scenario(name, "A job with no token calling a plain webhook: audit has nothing to say (the target may need "
                    "no Google token), but a 401 from it is missing-auth-token, confirmed by the config.",
                    [job, ok], logs,
                    want=[("partner-sync", "firing", "missing-auth-token", 1)])


def s_audience_mismatch():
    name = "audience-mismatch-custom-domain"
    log = Log(name)
    job = http_job(P, "europe-west1", "report-rollup-aud", f"{RUN_APP}/tasks/rollup", token="oidc", sa=REPORTS_SA,
                   audience="https://reports.acme.example")
    same_origin = http_job(P, "europe-west1", "report-digest", f"{RUN_APP}/tasks/digest", token="oidc",
                           sa=REPORTS_SA, audience=RUN_APP)
    logs = []
    for m in range(0, 50, 10):
        logs += log.attempt(same_origin, at(20, 9, m, 1), 200)
        logs += log.attempt(job, at(20, 9, m), 401)
    logs += log.attempt(job, at(20, 9, 50), 200)
    return Scenario(name, "OIDC audience set to a custom domain while the job calls the run.app URL (rule 5): likely, "
                    "so it fires at the third 401 and resolves on success; an audience of the same origin with "
                    "another path is fine.",
                    [job, same_origin], logs,
                    want=[("report-rollup-aud", "firing", "oidc-audience-mismatch", 3),
                          ("report-rollup-aud", "resolved", "oidc-audience-mismatch", 5)],
                    want_audit={"report-rollup-aud": ["oidc-audience-mismatch"]})


def s_invoker_403():
    name = "missing-invoker-403-run-service"
    log = Log(name)
    job = http_job(P, "europe-west1", "report-rollup", f"{RUN_APP}/tasks/rollup", token="oidc", sa=REPORTS_SA,
                   audience=RUN_APP)
    logs = log.run(job, at(20, 6), [403, 403])
    logs += log.run(job, at(20, 6, 10), [403, 403])
    return Scenario(name, "A correct OIDC token to a private Cloud Run service, answered 403 (rule 6): likely, fires "
                    "at the third failure; the fix grants roles/run.invoker to the job's service account.",
                    [job], logs,
                    want=[("report-rollup", "firing", "missing-invoker-permission", 3)])


def s_unexplained():
    name = "unexplained-401-oauth-googleapis"
    log = Log(name)
    uri = v1_run_job("europe-west1", P, "nightly-etl")
    job = http_job(P, "europe-west1", "nightly-etl-trigger", uri, token="oauth", sa=ETL_SA, schedule="0 2 * * *")
    logs = log.run(job, at(20, 2), [401, 401, 401, 401])
    return Scenario(name, "A correct OAuth token to a Google API that still gets 401 (e.g. the service agent cannot "
                    "mint tokens): nothing in the config explains it, unexplained-auth-failure at the third failure.",
                    [job], logs,
                    want=[("nightly-etl-trigger", "firing", "unexplained-auth-failure", 3)])


def s_unknown_job():
    name = "job-missing-from-inventory"
    log = Log(name)
    known = http_job(P, "us-east1", "healthy-job", v1_run_job("us-east1", P, "healthy"), token="oauth", sa=SA,
                     schedule="*/5 * * * *")
    unknown = http_job(P, "us-east1", "orphan-export", v2_run_job("us-east1", P, "orphan-export"),
                       in_inventory=False, schedule="*/5 * * * *")
    plan = [401, 401, 200, 401, 401, 404, 401]  # two failures then a success: silence; then three
    logs = []
    for i, http in enumerate(plan):
        logs += log.attempt(known, at(20, 9, 5 * i, 3), 200)
        logs += log.attempt(unknown, at(20, 9, 5 * i), http)
    return Scenario(name, "401s for a job the inventory does not hold (rule 1): two failures then a success end an "
                    "unfired incident in silence; three more (a 404 between them neither counts nor resolves) fire.",
                    [known, unknown], logs,
                    want=[("orphan-export", "firing", "auth-config-unavailable", 3)])


def s_pubsub_app_engine():
    name = "pubsub-and-app-engine-targets"
    log = Log(name)
    ps = pubsub_job(P, "europe-west1", "heartbeat-publisher", "heartbeat")
    ae = app_engine_job(P, "europe-west1", "legacy-cron-cleanup", "worker", "/tasks/cleanup")
    logs = []
    for i in range(3):
        logs += log.attempt(ps, at(20, 2, 5 * i), 403)
        logs += log.attempt(ae, at(20, 2, 5 * i, 30), 401)
    return Scenario(name, "Jobs without an httpTarget skip rules 2-5: a Pub/Sub-target job's 403s are "
                    "missing-invoker-permission, an App Engine job's 401s unexplained-auth-failure, both likely; "
                    "audit has no findings.",
                    [ps, ae], logs,
                    want=[("heartbeat-publisher", "firing", "missing-invoker-permission", 3),
                          ("legacy-cron-cleanup", "firing", "unexplained-auth-failure", 3)])


def s_repeat():
    name = "repeat-after-4h"
    log = Log(name)
    job = http_job(P, "us-east1", "invoice-export", "https://invoice-api-4x7qk2m9da-ue.a.run.app/export",
                   token="oidc", sa="invoice-exporter@acme-data-prod.iam.gserviceaccount.com",
                   audience="https://invoice-api-4x7qk2m9da-ue.a.run.app", schedule="*/30 * * * *")
    logs = []
    for i in range(20):  # 09:00 .. 18:30, every 30 minutes, all with the same latency
        logs += log.attempt(job, at(20, 9) + timedelta(minutes=30 * i), 403, latency_ms=1500)
    logs += log.attempt(job, at(20, 19), 200, latency_ms=1500)
    return Scenario(name, "403 every 30 minutes for 10 hours: fires at the third (10:00), repeats exactly 4 h of "
                    "event time later (14:00, the boundary counts) and again at 18:00, then resolves.",
                    [job], logs,
                    want=[("invoice-export", "firing", "missing-invoker-permission", 3),
                          ("invoice-export", "repeat", "missing-invoker-permission", 11),
                          ("invoice-export", "repeat", "missing-invoker-permission", 19),
                          ("invoice-export", "resolved", "missing-invoker-permission", 20)])


def s_late_success():
    name = "late-older-success"
    log = Log(name)
    uri = v1_run_job("us-east1", P, "commit-worker")
    job = http_job(P, "us-east1", "commit-worker", uri, token="oidc", sa=ETL_SA, audience=uri)
    f = lambda m, s=0: finished_only(log.attempt(job, at(20, 9, m, s), 401, latency_ms=0))[0]  # noqa: E731
    ok = lambda m, s=0: finished_only(log.attempt(job, at(20, 9, m, s), 200, latency_ms=0))[0]  # noqa: E731
    logs = [f(0), f(10), f(20)]
    logs += [ok(15)]  # older than the last failure, arriving late: changes nothing
    logs += [ok(20)]  # same event time as the last failure: not later, changes nothing
    logs += [f(30), ok(40)]  # the first later success resolves (4 failures)
    logs += [ok(35)]  # an older success after the end: nothing to resolve
    logs += [f(50)]  # a new incident, a new id
    return Scenario(name, "Successes older than (or as old as) the incident's last failure arrive late and must not "
                    "resolve it; the first later success does; a failure after that opens a new incident.",
                    [job], logs,
                    want=[("commit-worker", "firing", "oidc-token-for-google-api", 1),
                          ("commit-worker", "resolved", "oidc-token-for-google-api", 4),
                          ("commit-worker", "firing", "oidc-token-for-google-api", 1)],
                    want_audit={"commit-worker": ["oidc-token-for-google-api"]})


def s_duplicates():
    name = "duplicates-ndjson-and-pull-response"
    log = Log(name)
    job = http_job(P, "europe-west1", "report-rollup", f"{RUN_APP}/tasks/rollup", token="oidc", sa=REPORTS_SA,
                   audience=RUN_APP)
    s1, f1 = log.attempt(job, at(20, 6, 0), 403)
    s2, f2 = log.attempt(job, at(20, 6, 10), 403)
    s3, f3 = log.attempt(job, at(20, 6, 20), 403)
    _, ok = log.attempt(job, at(20, 6, 30), 200)
    sub = f"projects/{P}/subscriptions/schedwatch-push"
    logs = [s1, f1, f1,  # the same line twice (overlapping sinks)
            pull_response([s2, f2, f1], name, 0),  # f1 again, inside a pull response
            push_envelope(f2, 3, name, sub),  # f2 again, pushed
            f2,  # and once more as a plain line
            pull_response([s3], name, 4), f3,  # the third distinct failure: fires at 3
            pull_response([f3, ok], name, 5),
            ok, ok]
    return Scenario(name, "The same entry (logName, insertId, timestamp) delivered many times, as NDJSON lines, "
                    "inside a Pub/Sub pull response and a push envelope, counts once: fires at the third distinct "
                    "403, resolves with count 3.",
                    [job], logs,
                    want=[("report-rollup", "firing", "missing-invoker-permission", 3),
                          ("report-rollup", "resolved", "missing-invoker-permission", 3)])


def s_gcloud_array():
    name = "gcloud-array-newest-first"
    log = Log(name)
    job = http_job(P, "europe-west1", "report-rollup-aud", f"{RUN_APP}/tasks/rollup", token="oidc", sa=REPORTS_SA,
                   audience="https://reports.acme.example")
    other = http_job(P, "europe-west1", "nightly-etl-trigger", v1_run_job("europe-west1", P, "nightly-etl"),
                     token="oauth", sa=ETL_SA)
    logs = []
    for m, http in [(0, 401), (10, 401), (20, 401), (30, 200), (40, 401), (50, 401)]:
        logs += log.attempt(job, at(20, 9, m), http)
        logs += log.attempt(other, at(20, 9, m, 5), 200)
    newest_first = sorted(logs, key=lambda e: e["timestamp"], reverse=True)
    return Scenario(name, "A `gcloud logging read --format=json` array, printed newest first: it must be processed in "
                    "timestamp order (fires at the third 401, resolves, then two 401s do not fire); in file order it "
                    "would give other alerts.",
                    [job, other], newest_first, fmt="array",
                    want=[("report-rollup-aud", "firing", "oidc-audience-mismatch", 3),
                          ("report-rollup-aud", "resolved", "oidc-audience-mismatch", 3)],
                    want_audit={"report-rollup-aud": ["oidc-audience-mismatch"]})


def s_pull():
    name = "pubsub-pull-responses"
    log = Log(name)
    uri = v1_run_job("europe-west1", P, "nightly-etl")
    job = http_job(P, "europe-west1", "nightly-etl-trigger", uri, token="oidc", sa=ETL_SA, audience=uri,
                   schedule="0 2 * * *")
    e = log.run(job, at(20, 2), [401, 401, 401, 401])
    e2 = log.run(job, at(21, 2), [200])
    docs = [pull_response(e[0:3], name, 0), {},  # an empty pull returns {}
            pull_response(e[3:8], name, 3), pull_response(e2, name, 8)]
    return Scenario(name, "Pub/Sub REST pull responses, one a line, carrying the seed case (OIDC to the Cloud Run "
                    "Admin API v1): fires at the first 401, resolved by the next night's success; an empty pull "
                    "({}) carries nothing.",
                    [job], docs, fmt="pubsub",
                    want=[("nightly-etl-trigger", "firing", "oidc-token-for-google-api", 1),
                          ("nightly-etl-trigger", "resolved", "oidc-token-for-google-api", 4)],
                    want_audit={"nightly-etl-trigger": ["oidc-token-for-google-api"]})


def s_push():
    name = "pubsub-push-envelopes"
    log = Log(name)
    job = http_job(P, "us-central1", "invoice-sync", "https://invoice-sync-4x7qk2m9da-uc.a.run.app/run",
                   schedule="*/10 * * * *")
    sub = f"projects/{P}/subscriptions/schedwatch-push"
    entries = []
    for m, http in [(0, 403), (10, 403), (20, 403), (30, 200)]:
        entries += finished_only(log.attempt(job, at(20, 13, m), http))
    docs = [push_envelope(e, i, name, sub) for i, e in enumerate(entries)]
    docs.insert(2, docs[1])  # redelivered: the same message twice
    return Scenario(name, "Pub/Sub push envelopes, one a line, with a redelivery: a job with no token calling a "
                    "private Cloud Run service gets 403 (rule 2, confirmed): fires at the first, resolves with 3.",
                    [job], docs, fmt="pubsub",
                    want=[("invoice-sync", "firing", "missing-auth-token", 1),
                          ("invoice-sync", "resolved", "missing-auth-token", 3)],
                    want_audit={"invoice-sync": ["missing-auth-token"]})


def s_many_jobs():
    name = "many-jobs-interleaved"
    log = Log(name)
    L = "us-east1"
    a = http_job(P, L, "ledger-close", v2_run_job(L, P, "ledger-close"), token="oidc", sa=ETL_SA,
                 audience=v2_run_job(L, P, "ledger-close"), schedule="*/5 * * * *")
    b = http_job(P, L, "healthy-job", v1_run_job(L, P, "healthy"), token="oauth", sa=SA, schedule="*/5 * * * *")
    c = http_job(P, L, "flaky-webhook", "https://hooks.partner.example/ingest", schedule="*/5 * * * *")
    d = http_job(P, L, "search-reindex", "https://search-api-4x7qk2m9da-ue.a.run.app/reindex", token="oidc",
                 sa="search-indexer@acme-data-prod.iam.gserviceaccount.com",
                 audience="https://search-api-4x7qk2m9da-ue.a.run.app", schedule="*/5 * * * *")
    e = http_job(P, L, "tmp-backfill", v2_run_job(L, P, "tmp-backfill"), in_inventory=False, schedule="*/5 * * * *")
    f = http_job(P, L, "mail-digest", "https://mail-api-4x7qk2m9da-ue.a.run.app/digest", token="oidc",
                 sa="mailer@acme-data-prod.iam.gserviceaccount.com", audience="https://mail.acme.example",
                 schedule="*/5 * * * *")
    plans = {
        a: [401, 401, 401, 401, 401, 401, 401],
        b: [200, 200, 200, 200, 200, 200, 200],
        c: [500, 503, 504, 404, 200, 500, 200],
        d: [403, 403, 500, 403, 404, 200, 200],
        e: [401, 401, 200, 504, None, None, None],
        f: [401, 401, 401, 401, None, None, None],
    }
    logs = []
    for i in range(7):
        for k, (job, plan) in enumerate(plans.items()):
            if plan[i] is not None:
                logs += log.attempt(job, at(20, 9, 5 * i, 7 * k), plan[i])
    logs = by_time(logs)
    return Scenario(name, "Six jobs interleaved with non-auth noise (404, 5xx, timeouts): each job's incident is its "
                    "own; noise neither counts nor resolves; an unfired incident ends in silence.",
                    [a, b, c, d, e, f], logs,
                    want=[("ledger-close", "firing", "oidc-token-for-google-api", 1),
                          ("search-reindex", "firing", "missing-invoker-permission", 3),
                          ("search-reindex", "resolved", "missing-invoker-permission", 3),
                          ("mail-digest", "firing", "oidc-audience-mismatch", 3)],
                    want_audit={"ledger-close": ["oidc-token-for-google-api"],
                                "mail-digest": ["oidc-audience-mismatch"]})


def s_code_follows_latest():
    name = "code-follows-latest-failure"
    log = Log(name)
    job = http_job(P, "europe-west1", "report-rollup", f"{RUN_APP}/tasks/rollup", token="oidc", sa=REPORTS_SA,
                   audience=RUN_APP, schedule="*/30 * * * *")
    logs = []
    for i in range(11):  # 09:00 .. 14:00: three 403s, then 401s
        logs += log.attempt(job, at(20, 9) + timedelta(minutes=30 * i), 403 if i < 3 else 401, latency_ms=900)
    logs += log.attempt(job, at(20, 14, 30), 200, latency_ms=900)
    return Scenario(name, "403 then 401 in one incident: it fires as missing-invoker-permission, and the repeat and "
                    "resolved notifications carry the latest failure's diagnosis (unexplained-auth-failure).",
                    [job], logs,
                    want=[("report-rollup", "firing", "missing-invoker-permission", 3),
                          ("report-rollup", "repeat", "unexplained-auth-failure", 11),
                          ("report-rollup", "resolved", "unexplained-auth-failure", 11)])


def s_inventory_shapes():
    name = "inventory-array-and-list-response"
    log = Log(name)
    L = "europe-west1"
    a = http_job(P, L, "export-orders", v1_run_job(L, P, "export-orders"), token="oidc", sa=ETL_SA,
                 audience=v1_run_job(L, P, "export-orders"), schedule="0 * * * *")
    b = http_job(P, L, "export-customers", v1_run_job(L, P, "export-customers"), token="oauth", sa=ETL_SA,
                 schedule="0 * * * *")
    c = http_job("acme-web-prod", L, "crm-push", "https://crm.partner.example/api/push", token="oauth",
                 sa="crm-sync@acme-web-prod.iam.gserviceaccount.com", schedule="*/15 * * * *")
    d = pubsub_job("acme-web-prod", L, "cache-warmer", "cache-warm")
    files = {"gcloud-list-acme-data-prod.json": [a.config, b.config],
             "rest-list-acme-web-prod.json": {"jobs": [c.config, d.config], "nextPageToken": ""}}
    logs = []
    for m in (0, 15, 30):
        logs += log.attempt(a, at(20, 10, m), 401)
        logs += log.attempt(b, at(20, 10, m, 4), 200)
        logs += log.attempt(c, at(20, 10, m, 9), 401)
        logs += log.attempt(d, at(20, 10, m, 12), 200)
    return Scenario(name, "The inventory as a `gcloud scheduler jobs list` array file and a REST {\"jobs\": [...]} "
                    "list file, two projects: jobs from both are found and diagnosed (rules 3 and 4).",
                    [a, b, c, d], logs, job_files=files,
                    want=[("export-orders", "firing", "oidc-token-for-google-api", 1),
                          ("crm-push", "firing", "oauth-token-for-non-google-target", 1)],
                    want_audit={"export-orders": ["oidc-token-for-google-api"],
                                "crm-push": ["oauth-token-for-non-google-target"]})


def s_overrides():
    name = "run-job-overrides-403"
    log = Log(name)
    L = "us-east1"
    uri = v2_run_job(L, P, "backfill")
    body = {"overrides": {"containerOverrides": [{"args": ["--since=2026-11-01"]}], "taskCount": 4,
                          "timeout": "3600s"}}
    job = http_job(P, L, "backfill-trigger", uri, token="oauth", sa=ETL_SA, body=body, schedule="0 3 * * *")
    logs = log.run(job, at(20, 3), [403, 403, 403, 403])
    return Scenario(name, "OAuth to the Cloud Run Admin API v2 with a body carrying overrides, answered 403 (rule 6): "
                    "the fix grants roles/run.invoker and names roles/run.developer for runWithOverrides.",
                    [job], logs,
                    want=[("backfill-trigger", "firing", "missing-invoker-permission", 3)])


def s_functions():
    name = "cloud-functions-targets"
    log = Log(name)
    L = "europe-west1"
    base = f"https://{L}-{P}.cloudfunctions.net"
    fn_oauth = http_job(P, L, "fn-rollup", f"{base}/rollup", token="oauth", sa=REPORTS_SA)
    fn_oidc = http_job(P, L, "fn-cleanup", f"{base}/cleanup", token="oidc", sa=REPORTS_SA,
                       audience=f"{base}/cleanup")
    fn_none = http_job(P, L, "fn-notify", f"{base}/notify")
    logs = []
    for m in (0, 10, 20):
        logs += log.attempt(fn_oauth, at(20, 11, m), 401)
        logs += log.attempt(fn_oidc, at(20, 11, m, 20), 403)
        logs += log.attempt(fn_none, at(20, 11, m, 40), 403)
    return Scenario(name, "Cloud Functions (cloudfunctions.net) targets: OAuth token (rule 4, 401), right OIDC token "
                    "but 403 (rule 6), and no token (rule 2, 403; audit flags it).",
                    [fn_oauth, fn_oidc, fn_none], logs,
                    want=[("fn-rollup", "firing", "oauth-token-for-non-google-target", 1),
                          ("fn-cleanup", "firing", "missing-invoker-permission", 3),
                          ("fn-notify", "firing", "missing-auth-token", 1)],
                    want_audit={"fn-rollup": ["oauth-token-for-non-google-target"],
                                "fn-notify": ["missing-auth-token"]})


SCENARIOS = [
    s_oidc_v2, s_oauth_run_app, s_no_token_googleapis, s_no_token_webhook, s_audience_mismatch, s_invoker_403,
    s_unexplained, s_unknown_job, s_pubsub_app_engine, s_repeat, s_late_success, s_duplicates, s_gcloud_array,
    s_pull, s_push, s_many_jobs, s_code_follows_latest, s_inventory_shapes, s_overrides, s_functions,
]


def tree(folder):
    out = {}
    for d, _, files in os.walk(folder):
        for f in files:
            p = os.path.join(d, f)
            with open(p, "rb") as fh:
                out[os.path.relpath(p, folder)] = fh.read()
    return out


def main(argv):
    check = "--check" in argv
    scenarios = [make() for make in SCENARIOS]
    names = [s.name for s in scenarios]
    assert len(set(names)) == len(names), "scenario names must be unique"
    with tempfile.TemporaryDirectory() as tmp:
        for s in scenarios:
            s.write(os.path.join(tmp, s.name))
        if check:
            stale = [n for n in names if tree(os.path.join(tmp, n)) != tree(os.path.join(OUT, n))]
            if stale:
                print(f"out of date (run scripts/make_scenarios.py): {', '.join(stale)}")
                return 1
            print(f"{len(names)} scenarios up to date")
            return 0
        os.makedirs(OUT, exist_ok=True)
        for n in names:
            shutil.rmtree(os.path.join(OUT, n), ignore_errors=True)
            shutil.copytree(os.path.join(tmp, n), os.path.join(OUT, n))
    codes = sorted({a["code"] for n in names
                    for a in json.load(open(os.path.join(OUT, n, "expected.json")))["alerts"]})
    print(f"wrote {len(names)} scenarios to {os.path.relpath(OUT, ROOT)}; codes covered: {', '.join(codes)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
