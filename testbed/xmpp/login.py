"""One real XMPP client for the authentication tests: logs in, then optionally joins (or creates) a MUC room.

    python login.py --port 5222 --jid alice@meet.test --password secret [--room r@conference.meet.test]
    python login.py --port 5222 --jid guest.meet.test --anonymous [--room r@conference.meet.test]

Prints one line per step and exits 0 when every step it was asked for succeeded, 1 otherwise:
"authenticated <full JID>" or "auth-failed <reason>"; then "joined <room>" or "join-refused <condition>".
With --hold it stays in the room until stdin closes (the room lives while someone is in it).
Uses slixmpp (from PyPI), so the tests speak real XMPP and real SASL.
"""

import argparse
import asyncio
import logging
import os
import sys

import slixmpp
from slixmpp.exceptions import IqError, PresenceError

if os.environ.get("XMPP_DEBUG"):
    logging.basicConfig(level=logging.DEBUG)


class Client(slixmpp.ClientXMPP):
    def __init__(self, jid: str, password: str) -> None:
        super().__init__(jid, password)
        # Prosody's test configuration listens in plain text on loopback, as the pod's does behind TLS.
        self.enable_starttls = False
        self.enable_direct_tls = False
        self.enable_plaintext = True
        # ... so SASL runs unencrypted too: SCRAM (what Prosody's internal_hashed offers first) and PLAIN.
        self.plugin["feature_mechanisms"].unencrypted_scram = True
        self.plugin["feature_mechanisms"].unencrypted_plain = True
        self.register_plugin("xep_0045")
        self.outcome = asyncio.get_event_loop().create_future()
        self.add_event_handler("session_start", self._started)
        self.add_event_handler("failed_all_auth", self._failed)

    async def _started(self, _event) -> None:
        self.send_presence()
        if not self.outcome.done():
            self.outcome.set_result(str(self.boundjid))

    def _failed(self, _event) -> None:
        if not self.outcome.done():
            self.outcome.set_exception(RuntimeError("not-authorized"))


async def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--jid", required=True, help="user@domain, or a bare domain with --anonymous")
    parser.add_argument("--password", default="")
    parser.add_argument("--anonymous", action="store_true")
    parser.add_argument("--room")
    parser.add_argument("--nick", help="default: unique per client")
    parser.add_argument("--hold", action="store_true")
    args = parser.parse_args()

    nick = args.nick or f"{args.jid.split('@')[0]}-{os.getpid()}"
    client = Client(args.jid, "" if args.anonymous else args.password)
    client.connect(args.host, args.port)
    try:
        bound = await asyncio.wait_for(client.outcome, 20)
    except (RuntimeError, asyncio.TimeoutError) as error:
        print(f"auth-failed {error or 'timeout'}", flush=True)
        client.disconnect()
        return 1
    print(f"authenticated {bound}", flush=True)
    code = 0
    if args.room:
        # The room's refusal is an error presence, which join_muc_wait does not end on: watch for it.
        refused = asyncio.get_event_loop().create_future()

        def on_error(presence) -> None:
            if presence["from"].bare == args.room and not refused.done():
                refused.set_result(presence["error"]["condition"])

        client.add_event_handler("presence_error", on_error)
        join = asyncio.ensure_future(
            client.plugin["xep_0045"].join_muc_wait(args.room, nick, maxstanzas=0, timeout=20)
        )
        done, _ = await asyncio.wait({join, refused}, return_when=asyncio.FIRST_COMPLETED)
        if refused in done:
            join.cancel()
            print(f"join-refused {refused.result()}", flush=True)
            code = 1
        else:
            try:
                join.result()
                print(f"joined {args.room}", flush=True)
            except (PresenceError, IqError) as error:
                print(f"join-refused {error.condition}", flush=True)
                code = 1
            except asyncio.TimeoutError:
                print("join-refused timeout", flush=True)
                code = 1
    if args.hold and code == 0:
        print("holding", flush=True)
        await asyncio.get_event_loop().run_in_executor(None, sys.stdin.read)
    client.disconnect()
    await client.disconnected
    return code


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
