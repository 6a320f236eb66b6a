#!/usr/bin/env python3
"""MinIO bucket notification -> Backblaze B2 event notification, for docker-compose only.

Why this exists: the processor's webhook (POST /v1/b2/events) accepts only what Backblaze B2
sends: {"events": [...]} with B2's field names and an `x-bz-event-notification-signature:
v1=<hex HMAC-SHA256(secret, body)>` header. MinIO can POST bucket notifications to a webhook,
but in the S3 format ({"Records": [...]}) and unsigned, so the processor rightly refuses them.
This relay receives MinIO's webhook, rewrites each object-created record into B2's format,
signs the body with B2_WEBHOOK_SECRET and forwards it. It answers MinIO with the processor's
status, so a refused or failed delivery stays in MinIO's queue and is retried, as B2 retries.

Differences from real B2 (the processor does not depend on them):
- MinIO sends one record per request; B2 batches up to 50 events.
- Without bucket versioning MinIO has no version id; the record's `sequencer` (unique per
  write) stands in for B2's per-upload file id, so a re-upload gets a new photo id as on B2.
- `eventId` is derived from bucket, key and sequencer, so MinIO redeliveries are recognised
  as duplicates, like B2 redeliveries.

`scripts/dev` does not need this: devstack's S3 server emits exact B2 notifications itself.

Standard library only. Environment:
  RELAY_LISTEN        host:port to listen on (default 0.0.0.0:8090)
  RELAY_TARGET        processor webhook URL (default http://processor:8081/v1/b2/events)
  B2_WEBHOOK_SECRET   signing secret, the processor's B2_WEBHOOK_SECRET (default local-webhook-secret)
`b2-relay.py --self-test` checks the translation and signing end to end on loopback.
"""

import datetime
import hashlib
import hmac
import http.server
import json
import os
import sys
import threading
import urllib.error
import urllib.parse
import urllib.request

# S3 event name -> B2 event type. The processor enqueues Upload and MultipartUpload and
# ignores the rest, exactly as for real B2 events.
EVENT_TYPES = {
    "s3:ObjectCreated:Put": "b2:ObjectCreated:Upload",
    "s3:ObjectCreated:Post": "b2:ObjectCreated:Upload",
    "s3:ObjectCreated:CompleteMultipartUpload": "b2:ObjectCreated:MultipartUpload",
    "s3:ObjectCreated:Copy": "b2:ObjectCreated:Copy",
}


def sign(secret: bytes, body: bytes) -> str:
    """The value of x-bz-event-notification-signature for `body`."""
    return "v1=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def to_millis(iso: str) -> int:
    """MinIO's eventTime (RFC 3339, e.g. 2025-01-02T03:04:05.678Z) -> Unix milliseconds."""
    t = datetime.datetime.fromisoformat(iso.replace("Z", "+00:00"))
    return int(t.timestamp() * 1000)


def translate(minio: dict) -> dict:
    """A MinIO/S3 notification body -> a B2 notification body (object-created events only)."""
    events = []
    for rec in minio.get("Records") or []:
        event_type = EVENT_TYPES.get(rec.get("eventName", ""))
        if event_type is None:
            continue
        s3 = rec.get("s3", {})
        bucket = s3.get("bucket", {}).get("name", "")
        obj = s3.get("object", {})
        key = urllib.parse.unquote_plus(obj.get("key", ""))  # MinIO URL-encodes keys
        sequencer = obj.get("sequencer", "")
        version = obj.get("versionId") or ""
        if version in ("", "null"):
            version = sequencer
        event_id = hashlib.sha256(f"{bucket}\0{key}\0{sequencer}".encode()).hexdigest()[:32]
        event = {
            "accountId": "minio",
            "bucketId": "minio-" + bucket,
            "bucketName": bucket,
            "eventId": event_id,
            "eventType": event_type,
            "eventVersion": 1,
            "matchedRuleName": "minio-relay",
            "objectName": key,
            "objectSize": int(obj.get("size", 0)),
            "objectVersionId": version,
        }
        if rec.get("eventTime"):
            event["eventTimestamp"] = to_millis(rec["eventTime"])
        events.append(event)
    return {"events": events}


class Relay(http.server.BaseHTTPRequestHandler):
    target = "http://processor:8081/v1/b2/events"
    secret = b"local-webhook-secret"

    def do_POST(self):  # noqa: N802 (http.server naming)
        length = int(self.headers.get("Content-Length") or 0)
        try:
            note = translate(json.loads(self.rfile.read(length) or b"{}"))
        except (ValueError, TypeError, AttributeError) as e:
            return self.reply(400, {"error": f"not a MinIO notification: {e}"})
        if not note["events"]:
            return self.reply(200, {"forwarded": 0})
        body = json.dumps(note, separators=(",", ":")).encode()
        req = urllib.request.Request(self.target, data=body, method="POST", headers={
            "Content-Type": "application/json",
            "x-bz-event-notification-signature": sign(self.secret, body),
        })
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return self.reply(resp.status, json.loads(resp.read() or b"{}"))
        except urllib.error.HTTPError as e:  # the processor refused: pass its status on
            return self.reply(e.code, {"error": e.read().decode(errors="replace")})
        except OSError as e:  # processor not up yet: 502, MinIO keeps the event queued
            return self.reply(502, {"error": str(e)})

    def reply(self, status: int, payload: dict):
        out = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def log_message(self, fmt, *args):
        sys.stderr.write("b2-relay: " + (fmt % args) + "\n")


def serve(listen: str, target: str, secret: bytes) -> http.server.ThreadingHTTPServer:
    host, port = listen.rsplit(":", 1)
    handler = type("ConfiguredRelay", (Relay,), {"target": target, "secret": secret})
    return http.server.ThreadingHTTPServer((host, int(port)), handler)


def self_test() -> int:
    """Relay on loopback in front of a fake processor that checks the signature."""
    secret = b"self-test-secret"
    got = {}

    class FakeProcessor(http.server.BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            body = self.rfile.read(int(self.headers["Content-Length"]))
            ok = hmac.compare_digest(self.headers.get("x-bz-event-notification-signature", ""), sign(secret, body))
            got["body"], got["ok"] = json.loads(body), ok
            self.send_response(200 if ok else 401)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, *_):
            pass

    fake = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FakeProcessor)
    relay = serve("127.0.0.1:0", f"http://127.0.0.1:{fake.server_address[1]}/v1/b2/events", secret)
    relay.RequestHandlerClass.log_message = lambda *_: None
    for s in (fake, relay):
        threading.Thread(target=s.serve_forever, daemon=True).start()
    minio_event = {"EventName": "s3:ObjectCreated:Put", "Key": "photos/users/u1/photos/a%20b.jpg", "Records": [{
        "eventName": "s3:ObjectCreated:Put", "eventTime": "2025-01-02T03:04:05.678Z",
        "s3": {"bucket": {"name": "photos"},
               "object": {"key": "users/u1/photos/a+b%C3%A9.jpg", "size": 1234, "sequencer": "17F00D"}},
    }]}
    req = urllib.request.Request(f"http://127.0.0.1:{relay.server_address[1]}/minio",
                                 data=json.dumps(minio_event).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        status = resp.status
    fake.shutdown()
    relay.shutdown()
    ev = got.get("body", {}).get("events", [{}])[0]
    checks = {
        "relay answered 200": status == 200,
        "signature verified": got.get("ok") is True,
        "event type": ev.get("eventType") == "b2:ObjectCreated:Upload",
        "key decoded": ev.get("objectName") == "users/u1/photos/a bé.jpg",
        "bucket": ev.get("bucketName") == "photos",
        "size": ev.get("objectSize") == 1234,
        "version from sequencer": ev.get("objectVersionId") == "17F00D",
        "timestamp": ev.get("eventTimestamp") == 1735787045678,
        "event id": len(ev.get("eventId", "")) == 32,
    }
    failed = [name for name, ok in checks.items() if not ok]
    if failed:
        print("b2-relay self-test FAILED: " + ", ".join(failed), file=sys.stderr)
        return 1
    print(f"b2-relay self-test: {len(checks)} checks ok")
    return 0


def main() -> int:
    if sys.argv[1:] == ["--self-test"]:
        return self_test()
    listen = os.environ.get("RELAY_LISTEN", "0.0.0.0:8090")
    target = os.environ.get("RELAY_TARGET", Relay.target)
    secret = os.environ.get("B2_WEBHOOK_SECRET", "local-webhook-secret").encode()
    server = serve(listen, target, secret)
    print(f"b2-relay: listening on {listen}, forwarding signed B2 events to {target}", file=sys.stderr, flush=True)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
