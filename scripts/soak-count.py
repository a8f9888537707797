#!/usr/bin/env python3
"""The counting scripts/soak does at its end, in one place.

  soak-count.py mail MAILLOG QUEUE_END SINK_DIR WARNINGS
      Postfix's own view of the soak's mail, per sender (clean, virus,
      warmup): accepted, delivered, bounced, still queued, lost, deferred
      once, tempfailed at RCPT/end of message, rejected; queue ids reused;
      smtp-sink's dump files and the clamgate release that stamped them.
      Prints NAME=VALUE lines; writes Postfix's warnings, counted and
      normalized, to WARNINGS.
  soak-count.py journal JOURNAL
      Two lines: events by count; rejection reasons and canary peak RSS.
  soak-count.py live-id
      The live release id from `clamgate status --json` on stdin.
"""
import collections
import json
import os
import re
import sys

KINDS = {"sender@example.org": "clean", "virus@example.org": "virus", "warmup@example.org": "warmup"}


def mail(maillog, queue_end, sink, warnings):
    qfrom, sent, bounced, deferred = {}, set(), set(), set()
    clients = collections.Counter()
    tempf = collections.Counter(); rej = collections.Counter(); warn = collections.Counter()
    line_re = re.compile(r' postfix/(\w+)\[\d+\]: (.*)$')
    for line in open(maillog, errors="replace"):
        m = line_re.search(line)
        if not m:
            continue
        prog, msg = m.groups()
        fm = re.search(r'from=<([^>]*)>', msg)
        sender = fm.group(1) if fm else "?"
        kind = KINDS.get(sender, "other:" + sender)
        if prog == "smtpd":
            q = re.match(r'([0-9A-Za-z]+): client=', msg)
            if q:
                clients[q.group(1)] += 1
        if prog == "qmgr":
            q = re.match(r'([0-9A-Za-z]+): from=<([^>]*)>, size=', msg)
            if q:
                qfrom.setdefault(q.group(1), kind)
        if prog == "smtp":
            q = re.match(r'([0-9A-Za-z]+): to=<[^>]*>, .*status=(\w+)', msg)
            if q:
                {"sent": sent, "bounced": bounced, "deferred": deferred}.get(q.group(2), set()).add(q.group(1))
        r = re.search(r'reject: (MAIL|RCPT|DATA|END-OF-MESSAGE) from [^:]*: (\d\.\d\.\d|\d{3}) ', msg)
        if r and prog in ("smtpd", "cleanup"):
            stage, code = r.groups()
            (tempf if code.startswith("4") else rej)[(kind, stage)] += 1
        if "warning:" in msg or "fatal:" in msg or "panic:" in msg:
            w = re.sub(r'\[\d+\]|\b[0-9A-F]{8,}\b|\d+', 'N', msg.split(": ", 1)[-1] if msg.startswith(("warning", "fatal", "panic")) else msg)
            warn[prog + ": " + w[:150]] += 1
    queued = set()
    for line in open(queue_end, errors="replace"):
        q = re.match(r'^([0-9A-Za-z]{6,})[*!]?\s', line)
        if q:
            queued.add(q.group(1))
    out = {}
    for kind in ("clean", "virus", "warmup"):
        acc = {q for q, k in qfrom.items() if k == kind}
        lost = acc - sent - bounced - queued
        out[kind] = dict(accepted=len(acc), delivered=len(acc & sent), bounced=len(acc & bounced), queued=len(acc & queued),
                         lost=len(lost), deferred_once=len(acc & deferred),
                         tf_rcpt=tempf[(kind, "RCPT")] + tempf[(kind, "MAIL")], tf_eom=tempf[(kind, "END-OF-MESSAGE")] + tempf[(kind, "DATA")],
                         rejected=sum(v for (k, s), v in rej.items() if k == kind))
        if lost:
            print("lost_ids_%s=%s" % (kind, ",".join(sorted(lost)[:20])))
    for kind, d in out.items():
        for k, v in d.items():
            print("%s_%s=%d" % (kind, k, v))
    print("qid_reused=%d" % sum(1 for c in clients.values() if c > 1))
    others = sorted({k for k in qfrom.values() if k.startswith("other")})
    print("other_senders=%s" % ",".join(others))
    # smtp-sink dump files: per run of the load, and whether the milter stamped them
    files = [os.path.join(sink, f) for f in os.listdir(sink)]
    dump = collections.Counter(); unscanned = 0; releases = collections.Counter()
    for f in files:
        head = open(f, "rb").read(8192).decode("latin-1")
        m = re.search(r'^X-Mail-Args: <([^>]*)>', head, re.M)
        sender = m.group(1) if m else "?"
        kind = KINDS.get(sender, "other")
        dump[kind] += 1
        v = re.search(r'^X-Virus-Scanned: clamgate \(release ([^)]*)\)', head, re.M)
        if v:
            releases[v.group(1)[:12]] += 1
        elif kind == "clean":
            unscanned += 1
    for kind in ("clean", "virus", "warmup", "other"):
        print("%s_dumps=%d" % (kind, dump[kind]))
    print("clean_unscanned=%d" % unscanned)
    print("scanned_by=%s" % " ".join("%s:%d" % kv for kv in sorted(releases.items(), key=lambda kv: -kv[1])))
    with open(warnings, "w") as w:
        for k, v in warn.most_common():
            w.write("%6d  %s\n" % (v, k))


def journal(path):
    c = collections.Counter(); reasons = collections.Counter(); canary = 0
    for line in open(path):
        e = json.loads(line)
        c[e["event"]] += 1
        if e["event"] == "candidate.checked":
            canary = max(canary, ((e.get("canary") or {}).get("peak_rss_bytes") or 0))
            if e.get("verdict") != "pass":
                for r in e.get("reasons") or []:
                    reasons[r.get("reason", "?")] += 1
    print(", ".join("%s %d" % kv for kv in sorted(c.items())))
    print("rejection reasons (candidate.checked): " + (", ".join("%s %d" % kv for kv in sorted(reasons.items())) or "-")
          + "; canary clamd peak RSS %.1f MB" % (canary / 1048576))


def live_id():
    print(json.load(sys.stdin)["live"]["id"])


if __name__ == "__main__":
    commands = {"mail": (mail, 4), "journal": (journal, 1), "live-id": (live_id, 0)}
    if len(sys.argv) < 2 or sys.argv[1] not in commands or len(sys.argv) - 2 != commands[sys.argv[1]][1]:
        sys.exit(__doc__)
    fn, _ = commands[sys.argv[1]]
    fn(*sys.argv[2:])
