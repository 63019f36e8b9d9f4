"""Real XMPP clients for the Prosody tests: anonymous users who join MUC rooms and stay until told.

    python occupants.py --port 5222 --domain meet.test --muc conference.meet.test --rooms alpha=1,beta=2,gamma=5

Prints "ready" once every client has joined its room. Then reads commands from stdin, one per line:
"leave <room>" (every client of that room disconnects, then "left <room>" is printed) and "quit".
Uses slixmpp (a maintained XMPP library from PyPI), so the tests speak real XMPP, not hand-made stanzas.
"""

import argparse
import asyncio
import sys

import logging
import os

import slixmpp

if os.environ.get("XMPP_DEBUG"):
    logging.basicConfig(level=logging.DEBUG)


class Occupant(slixmpp.ClientXMPP):
    def __init__(self, domain: str) -> None:
        # A bare domain as JID: SASL ANONYMOUS, as Jitsi's guests log in.
        super().__init__(domain, "")
        self.enable_starttls = False
        self.enable_direct_tls = False
        self.enable_plaintext = True
        self.register_plugin("xep_0045")
        self.online = asyncio.get_event_loop().create_future()
        self.add_event_handler("session_start", self._started)
        self.add_event_handler("failed_auth", lambda _: self.online.set_exception(RuntimeError("auth failed")))

    async def _started(self, _event) -> None:
        await self.get_roster()
        self.send_presence()
        if not self.online.done():
            self.online.set_result(True)


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--domain", required=True)
    parser.add_argument("--muc", required=True)
    parser.add_argument("--rooms", required=True, help="room=occupants,...")
    args = parser.parse_args()

    rooms: dict[str, list[Occupant]] = {}
    for spec in args.rooms.split(","):
        name, count = spec.split("=")
        rooms[name] = []
        for index in range(int(count)):
            client = Occupant(args.domain)
            client.connect(args.host, args.port)
            await asyncio.wait_for(client.online, 20)
            await client.plugin["xep_0045"].join_muc_wait(f"{name}@{args.muc}", f"user{index}", maxstanzas=0, timeout=20)
            rooms[name].append(client)
    print("ready", flush=True)

    loop = asyncio.get_event_loop()
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        command = line.split()
        if not command or command[0] == "quit":
            break
        if command[0] == "leave" and len(command) == 2:
            for client in rooms.pop(command[1], []):
                client.disconnect()
                await client.disconnected
            print(f"left {command[1]}", flush=True)
    for clients in rooms.values():
        for client in clients:
            client.disconnect()


if __name__ == "__main__":
    asyncio.run(main())
