#!/usr/bin/env python3
"""An echo bot on the asyncio API of eurechat.peer: answers every message.

    export EURECHAT_PASSWORD='a long password'
    python examples/echo_bot.py --user echobot --directory 127.0.0.1:8888

Then, from any peer: ``/msg echobot hello`` -> ``echobot: echo: hello``.
"""

import argparse
import asyncio
import os
import sys

from eurechat.peer import AlreadyOnline, AuthFailed, NameTaken, PasswordRefused, Peer


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--user", default="echobot")
    ap.add_argument("--directory", default="127.0.0.1:8888", help="HOST:PORT")
    ap.add_argument("--data-dir", default=None, help="outbox/inbox directory")
    args = ap.parse_args()
    host, port = args.directory.rsplit(":", 1)
    password = os.environ.get("EURECHAT_PASSWORD")
    if not password:
        ap.exit(2, "echo_bot.py: set EURECHAT_PASSWORD to the bot's password "
                   "(at least 8 characters; the account is created if it is new)\n")

    async with Peer(args.user, password, directory=(host, int(port)),
                    register=True, data_dir=args.data_dir) as peer:
        print(f"{args.user} ready, listening on {peer.address[0]}:{peer.address[1]}", flush=True)
        # Each incoming message exactly once, in order; the reply is queued
        # durably and delivered even if the sender went offline meanwhile.
        async for msg in peer.messages():
            msgid = await peer.send([msg.sender], f"echo: {msg.text}")
            print(f"{msg.sender}: {msg.text!r} -> replied ({msgid})", flush=True)


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
    except (AuthFailed, NameTaken, PasswordRefused, AlreadyOnline) as exc:
        sys.exit(f"echo_bot.py: {exc}")
