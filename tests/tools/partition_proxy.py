#!/usr/bin/env python3
"""A TCP proxy that can partition the network, for the fault suite.

    partition_proxy.py LISTEN_PORT TARGET_PORT

Forwards every connection to 127.0.0.1:LISTEN_PORT to 127.0.0.1:TARGET_PORT.
SIGUSR1 partitions: bytes stop flowing both ways (held, as a network that
drops packets holds them in the senders' retransmit queues) and new
connections are accepted but get nothing through. SIGUSR2 heals: what was
held flows on. Prints "partitioned" / "healed" on each change.
"""
import asyncio
import signal
import sys


async def main(listen_port, target_port):
    flowing = asyncio.Event()
    flowing.set()

    async def pump(reader, writer):
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                await flowing.wait()
                writer.write(data)
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            try:
                writer.close()
            except Exception:
                pass

    async def handle(client_reader, client_writer):
        await flowing.wait()
        try:
            server_reader, server_writer = await asyncio.open_connection(
                "127.0.0.1", target_port)
        except OSError:
            client_writer.close()
            return
        await asyncio.gather(pump(client_reader, server_writer),
                             pump(server_reader, client_writer))

    loop = asyncio.get_running_loop()

    def partition():
        flowing.clear()
        print("partitioned", flush=True)

    def heal():
        flowing.set()
        print("healed", flush=True)

    loop.add_signal_handler(signal.SIGUSR1, partition)
    loop.add_signal_handler(signal.SIGUSR2, heal)
    server = await asyncio.start_server(handle, "127.0.0.1", listen_port)
    print("listening", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), int(sys.argv[2])))
