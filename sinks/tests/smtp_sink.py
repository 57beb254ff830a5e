"""A real SMTP server for the email sink's tests (sinks/tests/email.rs), and a message parser.

    python3 smtp_sink.py serve PORT DIR [USER PASSWORD]
        Listens on 127.0.0.1:PORT with aiosmtpd and writes each message it accepts to
        DIR/NNNN.json: {"mail_from", "rcpt_tos", "data"} (data is the raw message, as sent).
        With USER and PASSWORD, AUTH (PLAIN, LOGIN) is offered over the plain connection and
        required before MAIL. Recipients starting with "reject" get 550, with "busy" get 451.
        Runs until killed.

    python3 smtp_sink.py parse FILE
        Prints the message in FILE (one written by `serve`) as JSON: its headers in order
        (name, value as written, unfolded), its content type, and its leaf parts (content type,
        decoded text).
"""

import asyncio
import email
import email.policy
import json
import os
import sys


def serve(port, out_dir, user=None, password=None):
    from aiosmtpd.controller import Controller
    from aiosmtpd.smtp import AuthResult

    class Handler:
        def __init__(self):
            self.n = 0

        async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
            if address.startswith("reject"):
                return "550 5.1.1 mailbox unavailable"
            if address.startswith("busy"):
                return "451 4.3.0 try again later"
            envelope.rcpt_tos.append(address)
            return "250 OK"

        async def handle_DATA(self, server, session, envelope):
            self.n += 1
            record = {
                "mail_from": envelope.mail_from,
                "rcpt_tos": list(envelope.rcpt_tos),
                "data": envelope.original_content.decode("utf-8", "surrogateescape"),
            }
            tmp = os.path.join(out_dir, "%04d.tmp" % self.n)
            with open(tmp, "w", encoding="utf-8", errors="surrogateescape") as f:
                json.dump(record, f)
            # Renamed into place, so the test never reads half a file.
            os.rename(tmp, os.path.join(out_dir, "%04d.json" % self.n))
            return "250 Message accepted for delivery"

    kwargs = {}
    if user is not None:

        def authenticator(server, session, envelope, mechanism, auth_data):
            ok = auth_data.login == user.encode() and auth_data.password == password.encode()
            # handled=False: aiosmtpd answers 535 itself (handled=True would leave it silent).
            return AuthResult(success=ok, handled=False)

        kwargs = dict(authenticator=authenticator, auth_required=True, auth_require_tls=False)

    controller = Controller(Handler(), hostname="127.0.0.1", port=port, **kwargs)
    controller.start()
    print("listening on 127.0.0.1:%d" % port, flush=True)
    try:
        asyncio.run(asyncio.Event().wait())
    finally:
        controller.stop()


def parse(path):
    with open(path, encoding="utf-8", errors="surrogateescape") as f:
        record = json.load(f)
    raw = record["data"].encode("utf-8", "surrogateescape")
    # compat32 keeps header values as written (encoded words and all); default decodes them.
    raw_msg = email.message_from_bytes(raw, policy=email.policy.compat32)
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    parts = []
    for part in msg.walk():
        if part.is_multipart():
            continue
        parts.append({"content_type": part.get_content_type(), "text": part.get_content()})
    out = {
        "headers": [[k, str(v)] for k, v in msg.items()],
        "raw_headers": [[k, v] for k, v in raw_msg.items()],
        "content_type": msg.get_content_type(),
        "parts": parts,
        "defects": [type(d).__name__ for d in msg.defects],
    }
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        serve(int(sys.argv[2]), sys.argv[3], *sys.argv[4:6])
    elif sys.argv[1] == "parse":
        parse(sys.argv[2])
    else:
        sys.exit("usage: smtp_sink.py serve PORT DIR [USER PASSWORD] | parse FILE")
