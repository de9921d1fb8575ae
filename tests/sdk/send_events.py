#!/usr/bin/env python3
"""Drive a real, unmodified Segment-compatible Python SDK against a Corvus endpoint.

Usage:
    python3 tests/sdk/send_events.py --host http://127.0.0.1:PORT --write-key KEY \
        --sdk segment|rudder --count N [--gzip] [--sync] [--max-retries R] \
        [--deadline SECONDS] [--details] [--seed S] [--debug]

SDKs (see tests/sdk/requirements.txt for the pinned versions):
    segment -> PyPI `segment-analytics-python`, module `segment.analytics`
    rudder  -> PyPI `rudder-sdk-python`,        module `rudderstack.analytics`

Both SDKs POST every batch to  <host>/v1/batch  with HTTP Basic auth (write key as
user name, empty password). `--gzip` sets the SDK's own `gzip` client option
(segment's default is off, rudder's default is on; this script always sets it
explicitly so the flag alone decides).

By default the SDK runs in its normal background-thread mode (batches of up to 100
messages, retries on 5xx/429/network errors) and the script calls flush() + join()
so it blocks until the queue is drained. `--sync` uses the SDKs' sync_mode instead:
one message per request, sent from the calling thread, no retries.

Exactly ONE JSON line goes to stdout:
    {"sdk": "segment", "sent": [messageId, ...], "errors": [str, ...],
     "failed": [messageId, ...]}          (+ "messages": [...] with --details)
"sent" lists every messageId handed to the SDK (they are passed explicitly with
message_id=..., so they are exactly what goes on the wire). "failed" lists the
messageIds of batches reported through on_error / raised in sync mode.
Exit code 0 when there were no errors, 1 otherwise (2 on bad usage).
"""

import argparse
import datetime as dt
import json
import logging
import random
import sys
import threading
import uuid

EVENT_TYPES = ["track", "identify", "page", "screen", "group", "alias"]

TRACK_EVENTS = [
    ("Order Completed", lambda r, i: {
        "order_id": "ord_%06d" % i,
        "revenue": round(r.uniform(5, 500), 2),
        "currency": "EUR",
        "coupon": None,
        "products": [
            {"product_id": "sku-%d" % r.randint(1, 999), "name": "Café Crème", "price": 3.5, "quantity": 2},
            {"product_id": "sku-%d" % r.randint(1, 999), "name": "Croissant", "price": 2.25, "quantity": 1},
        ],
    }),
    ("Product Viewed", lambda r, i: {
        "product_id": "sku-%d" % r.randint(1, 999),
        "category": "Shoes",
        "price": 89.99,
        "in_stock": r.random() < 0.8,
        "tags": ["summer", "sale"],
    }),
    ("Signed Up", lambda r, i: {"method": r.choice(["email", "google", "github"]), "trial": True, "referrer": None}),
    ("Button Clicked", lambda r, i: {"button": "checkout", "position": {"x": r.randint(0, 1920), "y": r.randint(0, 1080)}}),
]

PAGES = [
    ("Home", "Marketing", "/"),
    ("Pricing", "Marketing", "/pricing"),
    ("Checkout", "Shop", "/checkout"),
    ("Docs – Getting started", None, "/docs/getting-started"),
]

SCREENS = [("Dashboard", "App"), ("Settings", "App"), ("Onboarding Step 2", None)]

FIRST_NAMES = ["Ada", "Grace", "José", "Zoë", "Linus", "Margaret", "Ken", "Barbara"]
LAST_NAMES = ["Lovelace", "Hopper", "Núñez", "Müller", "Torvalds", "Hamilton", "Thompson", "Liskov"]


def load_sdk(name):
    if name == "segment":
        import segment.analytics as mod
        from segment.analytics.client import Client
    elif name == "rudder":
        import rudderstack.analytics as mod
        from rudderstack.analytics.client import Client
    else:  # argparse already restricts choices
        raise ValueError(name)
    return mod, Client


class Recorder(object):
    """Collects failures reported by the SDK (possibly from its consumer thread)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.errors = []
        self.failed = []

    def on_error(self, error, batch):
        ids = []
        for msg in batch or []:
            if isinstance(msg, dict) and msg.get("messageId") is not None:
                ids.append(str(msg["messageId"]))
        with self.lock:
            self.errors.append("%s: %s (batch of %d)" % (type(error).__name__, error, len(batch or [])))
            self.failed.extend(ids)

    def add(self, text, ids=()):
        with self.lock:
            self.errors.append(text)
            self.failed.extend(ids)


class Identities(object):
    """A small population of visitors: some anonymous, some known, some both."""

    def __init__(self, rng, run_tag):
        self.rng = rng
        self.people = []
        for n in range(8):
            first, last = FIRST_NAMES[n], LAST_NAMES[n]
            self.people.append({
                "anonymous_id": "anon-%s-%d-%s" % (run_tag, n, uuid.UUID(int=rng.getrandbits(128)).hex[:12]),
                "user_id": "user-%s-%d" % (run_tag, n),
                "email": "%s.%s+%s@example.com" % (first.lower(), last.lower(), run_tag),
                "first_name": first,
                "last_name": last,
            })
        self.groups = ["grp-%s-acme" % run_tag, "grp-%s-globex" % run_tag, "grp-%s-initech" % run_tag]

    def ids(self, i, person):
        """Alternate anonymous-only, user-only and both."""
        mode = i % 3
        if mode == 0:
            return {"anonymous_id": person["anonymous_id"]}
        if mode == 1:
            return {"user_id": person["user_id"]}
        return {"user_id": person["user_id"], "anonymous_id": person["anonymous_id"]}


def build_call(i, rng, who, ctx_ip):
    """Return (method name, kwargs) for event number i (without message_id)."""
    kind = EVENT_TYPES[i % len(EVENT_TYPES)]
    person = who.people[(i // len(EVENT_TYPES)) % len(who.people)]
    context = {
        "ip": ctx_ip,
        "locale": rng.choice(["en-US", "de-DE", "fr-FR"]),
        "userAgent": "corvus-sdk-test/1.0",
        "campaign": {"source": "newsletter", "medium": "email", "name": "spring-%d" % (i % 4)},
    }
    kwargs = {"context": context}
    # every 7th event carries an explicit, timezone-aware timestamp in the past
    if i % 7 == 3:
        kwargs["timestamp"] = dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=rng.randint(1, 600))

    if kind == "track":
        event, props = TRACK_EVENTS[(i // len(EVENT_TYPES)) % len(TRACK_EVENTS)]
        kwargs.update(who.ids(i, person))
        kwargs["event"] = event
        kwargs["properties"] = props(rng, i)
        kwargs["integrations"] = {"All": True, "Mixpanel": False}
    elif kind == "identify":
        kwargs.update(who.ids(i, person))
        if "user_id" not in kwargs and i % 2 == 0:
            kwargs["user_id"] = person["user_id"]
        kwargs["traits"] = {
            "email": person["email"],
            "firstName": person["first_name"],
            "lastName": person["last_name"],
            "name": "%s %s" % (person["first_name"], person["last_name"]),
            "plan": rng.choice(["free", "pro", "enterprise"]),
            "logins": rng.randint(1, 100),
            "createdAt": dt.datetime(2023, 1 + (i % 12), 1 + (i % 28), 8, 30, tzinfo=dt.timezone.utc),
            "address": {"city": "Zürich", "country": "CH"},
        }
    elif kind == "page":
        name, category, path = PAGES[(i // len(EVENT_TYPES)) % len(PAGES)]
        kwargs.update(who.ids(i, person))
        kwargs["name"] = name
        if category:
            kwargs["category"] = category
        kwargs["properties"] = {
            "path": path,
            "url": "https://www.example.com" + path,
            "title": name + " | Example",
            "referrer": "https://www.google.com/",
            "search": "?utm_source=newsletter",
        }
    elif kind == "screen":
        name, category = SCREENS[(i // len(EVENT_TYPES)) % len(SCREENS)]
        kwargs.update(who.ids(i, person))
        kwargs["name"] = name
        if category:
            kwargs["category"] = category
        kwargs["properties"] = {"variation": rng.choice(["blue", "green"]), "load_ms": rng.randint(10, 900)}
        context["device"] = {"type": "ios", "model": "iPhone15,2", "manufacturer": "Apple"}
        context["os"] = {"name": "iOS", "version": "17.4"}
        context["app"] = {"name": "Example", "version": "3.2.1", "build": "3210"}
    elif kind == "group":
        kwargs.update(who.ids(i, person))
        gid = who.groups[(i // len(EVENT_TYPES)) % len(who.groups)]
        kwargs["group_id"] = gid
        kwargs["traits"] = {
            "name": gid.split("-")[-1].capitalize() + " Inc.",
            "industry": "Technology",
            "employees": rng.randint(5, 5000),
            "plan": "enterprise",
        }
    elif kind == "alias":
        # link the anonymous visitor to the known user
        kwargs["previous_id"] = person["anonymous_id"]
        kwargs["user_id"] = person["user_id"]
    return kind, kwargs


def summarize(kind, message_id, kwargs):
    out = {"messageId": message_id, "type": kind}
    for src, dst in (("user_id", "userId"), ("anonymous_id", "anonymousId"), ("previous_id", "previousId"),
                     ("group_id", "groupId"), ("event", "event"), ("name", "name")):
        if kwargs.get(src) is not None:
            out[dst] = kwargs[src]
    if kind == "identify":
        out["email"] = kwargs["traits"]["email"]
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description="Send events to a Segment-compatible endpoint with a real SDK.")
    ap.add_argument("--host", required=True, help="base URL, e.g. http://127.0.0.1:8080 (the SDK appends /v1/batch)")
    ap.add_argument("--write-key", required=True)
    ap.add_argument("--sdk", required=True, choices=["segment", "rudder"])
    ap.add_argument("--count", required=True, type=int)
    ap.add_argument("--gzip", action="store_true", help="enable the SDK's gzip option (request body gzip-compressed)")
    ap.add_argument("--sync", action="store_true", help="use the SDK's sync_mode (one request per message, no retries)")
    ap.add_argument("--max-retries", type=int, default=3, help="SDK max_retries in batch mode (default 3)")
    ap.add_argument("--timeout", type=float, default=15, help="SDK per-request HTTP timeout in seconds")
    ap.add_argument("--deadline", type=float, default=120,
                    help="give up (error, exit 1) if the SDK has not drained its queue after this many seconds")
    ap.add_argument("--seed", type=int, default=None, help="seed for the generated data (identifiers stay unique per run)")
    ap.add_argument("--details", action="store_true", help="add a per-message summary list 'messages' to the output")
    ap.add_argument("--debug", action="store_true", help="SDK debug logging to stderr")
    args = ap.parse_args(argv)
    if args.count < 0:
        ap.error("--count must be >= 0")

    logging.basicConfig(stream=sys.stderr, level=logging.DEBUG if args.debug else logging.WARNING)

    _mod, Client = load_sdk(args.sdk)
    rec = Recorder()
    client = Client(
        write_key=args.write_key,
        host=args.host,
        on_error=rec.on_error,
        gzip=bool(args.gzip),
        sync_mode=bool(args.sync),
        max_retries=args.max_retries,
        timeout=args.timeout,
        debug=args.debug,
    )

    rng = random.Random(args.seed)
    run_tag = uuid.uuid4().hex[:8]
    who = Identities(rng, run_tag)
    ctx_ip = "203.0.113.%d" % rng.randint(1, 254)  # TEST-NET-3, documentation range (just a string)

    sent = []
    details = []
    for i in range(args.count):
        kind, kwargs = build_call(i, rng, who, ctx_ip)
        message_id = str(uuid.uuid4())
        kwargs["message_id"] = message_id
        sent.append(message_id)
        if args.details:
            details.append(summarize(kind, message_id, kwargs))
        try:
            result = getattr(client, kind)(**kwargs)
        except Exception as e:  # sync mode raises on HTTP failure; both modes raise on invalid input
            rec.add("%s on %s %s: %s" % (type(e).__name__, kind, message_id, e), [message_id])
            continue
        if isinstance(result, tuple) and len(result) == 2:
            ok, msg = result
            if not ok:
                rec.add("queue full, %s %s not enqueued" % (kind, message_id), [message_id])
            elif isinstance(msg, dict) and msg.get("messageId") != message_id:
                rec.add("SDK rewrote messageId %s -> %s" % (message_id, msg.get("messageId")), [message_id])

    if not args.sync:
        # flush() = queue.join(): blocks until the consumer has acknowledged every
        # message (uploaded, or given up and reported through on_error). Run it in
        # a helper thread so a hung server cannot hang the caller past --deadline.
        done = threading.Event()

        def drain():
            try:
                client.flush()
                client.join()
            except Exception as e:  # pragma: no cover - defensive
                rec.add("%s during flush: %s" % (type(e).__name__, e))
            finally:
                done.set()

        t = threading.Thread(target=drain, daemon=True)
        t.start()
        if not done.wait(args.deadline):
            left = client.queue.unfinished_tasks  # queued + in flight / being retried
            rec.add("deadline of %gs exceeded before the SDK drained its queue (%d messages unacknowledged)"
                    % (args.deadline, left))

    out = {"sdk": args.sdk, "sent": sent, "errors": list(rec.errors), "failed": sorted(set(rec.failed))}
    if args.details:
        out["messages"] = details
    sys.stdout.write(json.dumps(out, ensure_ascii=False) + "\n")
    sys.stdout.flush()
    code = 1 if out["errors"] else 0
    if out["errors"] and not args.sync:
        # The SDK's consumer thread may still be sleeping in a retry; don't wait for
        # it (atexit would call join()).
        import os
        os._exit(code)
    return code


if __name__ == "__main__":
    sys.exit(main())
