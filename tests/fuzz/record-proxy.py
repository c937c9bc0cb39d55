#!/usr/bin/env python3
"""Records what clients send through a proxy: the real traffic seeds of the
fuzz targets (contrib/fuzz record).

    record-proxy.py LISTEN TARGET OUTDIR LABELFILE

LISTEN and TARGET are a unix socket path or HOST:PORT.  Each connection to
LISTEN is relayed to TARGET both ways; what the client sent is written,
byte for byte, to OUTDIR/LABEL-N when the connection ends, LABEL read from
LABELFILE as the connection starts (the recording script names the command
it runs there).  Runs until killed.
"""
import os
import socket
import sys
import threading


def address(a):
    if a.startswith("/"):
        return socket.AF_UNIX, a
    host, port = a.rsplit(":", 1)
    return socket.AF_INET, (host, int(port))


def pump(src, dst, sink):
    try:
        while True:
            b = src.recv(65536)
            if not b:
                break
            if sink is not None:
                sink.append(b)
            dst.sendall(b)
    except OSError:
        pass
    try:
        dst.shutdown(socket.SHUT_WR)
    except OSError:
        pass


def serve(conn, target, outdir, label, n):
    fam, addr = address(target)
    up = socket.socket(fam, socket.SOCK_STREAM)
    up.connect(addr)
    sent = []
    t = threading.Thread(target=pump, args=(up, conn, None))
    t.start()
    pump(conn, up, sent)
    t.join()
    conn.close()
    up.close()
    data = b"".join(sent)
    if data:
        with open(os.path.join(outdir, "%s-%d" % (label, n)), "wb") as f:
            f.write(data)


def main():
    listen, target, outdir, labelfile = sys.argv[1:5]
    fam, addr = address(listen)
    s = socket.socket(fam, socket.SOCK_STREAM)
    if fam == socket.AF_INET:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(addr)
    s.listen(16)
    n = 0
    while True:
        conn, _ = s.accept()
        n += 1
        try:
            with open(labelfile) as f:
                label = f.read().strip() or "conn"
        except OSError:
            label = "conn"
        threading.Thread(target=serve, args=(conn, target, outdir, label, n), daemon=True).start()


if __name__ == "__main__":
    main()
