"""What a Jitsi participant asks Prosody before it can use a TURN relay: the external services (XEP-0215).

    python external_services.py --port 5222 --domain meet.jitsi

Logs in anonymously (as a guest of the images' default configuration does) and asks its server for the
services of urn:xmpp:extdisco:2; prints them as one JSON list (each service's attributes: type, host, port,
transport, username, password, expires, restricted) and exits 0, or prints the error and exits 1.
"""

import argparse
import asyncio
import json
import sys
import xml.etree.ElementTree as ET

import slixmpp
from slixmpp.exceptions import IqError, IqTimeout

EXTDISCO = "urn:xmpp:extdisco:2"


class Client(slixmpp.ClientXMPP):
    def __init__(self, domain: str) -> None:
        super().__init__(domain, "")
        self.enable_starttls = False
        self.enable_direct_tls = False
        self.enable_plaintext = True
        self.started = asyncio.get_event_loop().create_future()
        self.add_event_handler("session_start", lambda _e: self.started.set_result(None))
        self.add_event_handler(
            "failed_all_auth", lambda _e: self.started.set_exception(RuntimeError("auth-failed"))
        )


async def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--domain", required=True)
    args = parser.parse_args()
    client = Client(args.domain)
    client.connect(args.host, args.port)
    try:
        await asyncio.wait_for(client.started, 15)
        iq = client.Iq()
        iq["type"] = "get"
        iq["to"] = args.domain
        iq.append(ET.fromstring(f"<services xmlns='{EXTDISCO}'/>"))
        answer = await iq.send(timeout=10)
    except (IqError, IqTimeout, RuntimeError, asyncio.TimeoutError) as error:
        print(f"error {error!r}")
        return 1
    finally:
        client.disconnect()
    services = answer.xml.find(f"{{{EXTDISCO}}}services")
    found = [dict(service.attrib) for service in services.findall(f"{{{EXTDISCO}}}service")]
    print(json.dumps(found))
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
