"""A participant's media leg, through a TURN relay or straight to the bridge.

    python relay_client.py --peer 10.250.0.2:30300 --count 20 \
        [--turn 10.250.1.20:443 --ca cert.pem --username U --password P]

With --turn: connects to the relay over TLS (TURN over TCP, RFC 6062's client side as browsers use it for
`turns:` servers), allocates a relayed UDP address (RFC 5766, long-term credentials — here the time-limited
ones Prosody handed out), binds a channel to the peer and exchanges --count datagrams with it through the
relay. Without: sends the datagrams to the peer directly over UDP. The peer answers each datagram (the
testbed's responder answers with its pod's name).

Prints one JSON object: how it went (allocation time, relayed address, datagrams and bytes each way, the
answers seen) and exits 0 when every datagram was answered, 1 otherwise. Uses aioice (PyPI).
"""

import argparse
import asyncio
import json
import socket
import ssl
import sys
import time

from aioice import turn


class Collect(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.answers: list[bytes] = []
        self.event = asyncio.Event()

    def datagram_received(self, data: bytes, addr) -> None:
        self.answers.append(data)
        self.event.set()


def address(text: str) -> tuple[str, int]:
    host, port = text.rsplit(":", 1)
    return host, int(port)


async def exchange(send, collect: Collect, count: int, peer) -> tuple[int, int]:
    sent_bytes = 0
    for n in range(count):
        payload = f"media {n}".encode()
        collect.event.clear()
        await send(payload, peer)
        sent_bytes += len(payload)
        try:
            await asyncio.wait_for(collect.event.wait(), 1.0)
        except asyncio.TimeoutError:
            pass
    return count, sent_bytes


async def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--peer", required=True)
    parser.add_argument("--count", type=int, default=20)
    parser.add_argument("--turn")
    parser.add_argument("--ca")
    parser.add_argument("--username")
    parser.add_argument("--password")
    args = parser.parse_args()
    peer = address(args.peer)
    collect = Collect()
    report: dict = {"peer": args.peer}
    if args.turn:
        context = ssl.create_default_context(cafile=args.ca)
        started = time.monotonic()
        try:
            transport, _ = await turn.create_turn_endpoint(
                lambda: collect,
                server_addr=address(args.turn),
                username=args.username,
                password=args.password,
                ssl=context,
                transport="tcp",
            )
        except Exception as error:  # the one sentence the test shows
            print(json.dumps({"error": f"allocation failed: {error!r}"}))
            return 1
        report["allocation_ms"] = round((time.monotonic() - started) * 1000, 1)
        report["relayed"] = "%s:%d" % transport.get_extra_info("sockname")
        report["via"] = f"turns:{args.turn}"

        async def send(data: bytes, to) -> None:
            transport.sendto(data, to)

        sent, sent_bytes = await exchange(send, collect, args.count, peer)
        transport.close()
    else:
        report["via"] = "direct"
        loop = asyncio.get_running_loop()
        try:
            transport, _ = await loop.create_datagram_endpoint(lambda: collect, family=socket.AF_INET)

            async def send(data: bytes, to) -> None:
                transport.sendto(data, to)

            sent, sent_bytes = await exchange(send, collect, args.count, peer)
            transport.close()
        except OSError as error:
            print(json.dumps({"error": f"direct UDP failed: {error!r}", "via": "direct"}))
            return 1
    report.update(
        sent=sent,
        sent_bytes=sent_bytes,
        answered=len(collect.answers),
        received_bytes=sum(len(a) for a in collect.answers),
        answers=sorted({a.decode(errors="replace").strip() for a in collect.answers}),
    )
    print(json.dumps(report))
    return 0 if len(collect.answers) >= sent else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
