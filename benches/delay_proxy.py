#!/usr/bin/env python3
"""A TCP proxy on loopback that delays every chunk, in both directions, by a fixed time.

Used to measure the master against a slow Redis (issue 17): mofm's `redis.port` points at the
proxy, the proxy at redis-server. Order is kept per direction; the delay is added to each
chunk's forwarding, not per connection (a pipelined batch costs one delay each way).

    benches/delay_proxy.py LISTEN_PORT TARGET_PORT DELAY_MS
"""

import asyncio
import sys
import time


async def pump(reader, writer, delay):
    queue = asyncio.Queue()

    async def forward():
        while True:
            due, data = await queue.get()
            if data is None:
                break
            wait = due - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            writer.write(data)
            await writer.drain()
        writer.close()

    task = asyncio.create_task(forward())
    try:
        while True:
            data = await reader.read(65536)
            if not data:
                break
            await queue.put((time.monotonic() + delay, data))
    finally:
        await queue.put((0, None))
        await task


async def main():
    listen, target, delay_ms = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
    delay = delay_ms / 1000.0

    async def handle(client_r, client_w):
        try:
            server_r, server_w = await asyncio.open_connection("127.0.0.1", target)
        except OSError:
            client_w.close()
            return
        await asyncio.gather(
            pump(client_r, server_w, delay),
            pump(server_r, client_w, delay),
            return_exceptions=True,
        )

    server = await asyncio.start_server(handle, "127.0.0.1", listen)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
