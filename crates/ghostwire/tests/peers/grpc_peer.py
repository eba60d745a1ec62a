"""A gRPC server and client nobody here wrote the protocol for (grpcio from PyPI), with raw
bytes as messages so no generated code is needed.

server PORT        serve gw.Test/Ping (unary) and gw.Test/Ticks (server streaming)
client ADDR        call both and print the answers
"""
import sys
import time
from concurrent import futures

import grpc


def serve(port):
    def ping(req, ctx):
        return b"pong:" + req

    def ticks(req, ctx):
        for i in range(3):
            yield b"tick%d" % i
            time.sleep(0.05)

    handler = grpc.method_handlers_generic_handler(
        "gw.Test",
        {
            "Ping": grpc.unary_unary_rpc_method_handler(ping),
            "Ticks": grpc.unary_stream_rpc_method_handler(ticks),
        },
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port("[::]:%s" % port)
    server.start()
    print("ready", flush=True)
    server.wait_for_termination()


def call(addr):
    with grpc.insecure_channel(addr) as ch:
        print(ch.unary_unary("/gw.Test/Ping")(b"x", timeout=10).decode())
        print(",".join(t.decode() for t in ch.unary_stream("/gw.Test/Ticks")(b"", timeout=10)))


if __name__ == "__main__":
    if sys.argv[1] == "server":
        serve(sys.argv[2])
    else:
        call(sys.argv[2])
