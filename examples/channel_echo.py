#!/usr/bin/env python3
"""The blocking Channel: an echo server thread and four client threads sharing
one channel.  Every reply is a whole message, however the sends interleave.

    python examples/channel_echo.py
"""

import threading

from eurechat.channel import Channel


def serve(listener) -> None:
    for ch in listener:                 # one Channel per connection
        with ch:
            for data in ch:             # whole messages until the client closes
                ch.send(data.upper())


def main() -> None:
    listener = Channel.listen("127.0.0.1", 0)
    threading.Thread(target=serve, args=(listener,), daemon=True).start()
    with Channel.connect(*listener.address) as ch:
        def client(n: int) -> None:
            for i in range(100):
                ch.send(f"thread {n} message {i} ".encode() * 50)

        threads = [threading.Thread(target=client, args=(n,)) for n in range(4)]
        for t in threads:
            t.start()
        replies = [ch.recv() for _ in range(400)]
        for t in threads:
            t.join()
    # Each reply is one sender's message, whole: the same phrase 50 times.
    assert all(r == r[:len(r) // 50] * 50 for r in replies)
    print(f"{len(replies)} whole replies, e.g. {replies[0][:30]!r}...")
    listener.close()


if __name__ == "__main__":
    main()
