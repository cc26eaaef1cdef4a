#!/usr/bin/env python3
"""A client written from proto-spec/PROTOCOL.md alone, with Python's standard
library: newline-delimited JSON over TCP. Submits two tasks (a text payload
and a binary one, as base64) and prints each result as a JSON line.

usage: json_client.py HOST PORT
"""
import base64
import json
import socket
import sys


def main():
    host, port = sys.argv[1], int(sys.argv[2])
    sock = socket.create_connection((host, port), timeout=20)
    stream = sock.makefile("rwb")

    def send(msg):
        stream.write(json.dumps(msg).encode() + b"\n")
        stream.flush()

    def recv():
        while True:
            line = stream.readline()
            if not line:
                sys.exit("master closed the connection")
            msg = json.loads(line)
            if msg["type"] == "ping":  # liveness: answer with the same seq
                send({"type": "pong", "seq": msg["seq"]})
                continue
            if msg["type"] == "error":
                sys.exit("master refused: %s (code %d)" % (msg["message"], msg["code"]))
            return msg

    send({"type": "hello", "role": "client", "node": "python-stdlib"})
    hello = recv()
    assert hello["type"] == "hello" and hello["role"] == "master", hello

    binary = bytes([0, 255, 1, 254])
    send({"type": "submit", "tasks": [
        {"kind": "echo", "payload": "hi"},
        {"kind": "echo", "payload": {"base64": base64.b64encode(binary).decode()}, "priority": 200},
    ]})
    accepted = recv()
    assert accepted["type"] == "accepted" and accepted["count"] == 2, accepted
    first = accepted["first_id"]

    results = {}
    while len(results) < 2:
        msg = recv()
        assert msg["type"] == "results", msg
        for r in msg["results"]:
            assert r["id"] not in results, "duplicate result"
            results[r["id"]] = r

    text = results[first]
    assert text["status"] == "ok" and text["output"] == "hi", text
    raw = results[first + 1]
    assert raw["status"] == "ok", raw
    assert base64.b64decode(raw["output"]["base64"]) == binary, raw
    for i in sorted(results):
        print(json.dumps(results[i]))
    send({"type": "goodbye", "reason": "done"})
    print("python client: ok")


if __name__ == "__main__":
    main()
