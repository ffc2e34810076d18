#!/usr/bin/env python3
"""A webhook receiver for the tests: every delivery is verified with the official openai SDK
(`client.webhooks.unwrap`, the secret given) and recorded, one JSON line each, in --out.

    webhook_receiver.py --secret whsec_... --out events.jsonl [--port N] [--fail N] [--status 500]

Prints `listening on PORT` once it listens. The first --fail deliveries are answered --status
(default 500; a 3xx names /redirected as its location) and recorded as {"refused": STATUS};
any request that follows such a redirect is recorded as {"followed": PATH}; later ones are verified: a valid one is
recorded as {"webhook_id", "type", "data", "id", "tamper_refused"} (the SDK must also refuse
the same delivery with one byte of its body changed) and answered 200; an invalid one is
recorded as {"rejected": REASON} and answered 400.
"""
import argparse
import http.server
import json
import sys
import threading

from openai import InvalidWebhookSignatureError, OpenAI


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--secret", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--fail", type=int, default=0)
    ap.add_argument("--status", type=int, default=500)
    args = ap.parse_args()
    client = OpenAI(api_key="unused", webhook_secret=args.secret)
    lock = threading.Lock()
    left = {"fail": args.fail}

    def record(entry):
        with lock, open(args.out, "a") as f:
            f.write(json.dumps(entry) + "\n")

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("content-length", "0")))
            headers = {k.lower(): v for k, v in self.headers.items()}
            with lock:
                fail = left["fail"] > 0
                left["fail"] -= 1 if fail else 0
            if fail:
                record({"refused": args.status, "webhook_id": headers.get("webhook-id"),
                        "path": self.path})
                return self.answer(args.status)
            try:
                event = client.webhooks.unwrap(body, headers)
            except Exception as e:  # noqa: BLE001 - any failure is a rejection to record
                record({"rejected": f"{type(e).__name__}: {e}"})
                return self.answer(400)
            tampered = body.replace(b'"data"', b'"Data"', 1)
            try:
                client.webhooks.unwrap(tampered, headers)
                tamper_refused = False
            except InvalidWebhookSignatureError:
                tamper_refused = True
            raw = json.loads(body)
            record({"webhook_id": headers["webhook-id"], "id": event.id, "type": event.type,
                    "data": raw["data"], "tamper_refused": tamper_refused})
            self.answer(200)

        def do_GET(self):
            # Only a client that follows a redirect comes here.
            record({"followed": self.path})
            self.answer(200)

        def answer(self, status):
            self.send_response(status)
            if 300 <= status < 400:
                self.send_header("location", "/redirected")
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *_):
            pass

    class Server(http.server.ThreadingHTTPServer):
        # Many deliveries connect at once; the default backlog of 5 would drop their SYNs.
        request_queue_size = 256

    server = Server(("127.0.0.1", args.port), Handler)
    print(f"listening on {server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    sys.exit(main())
