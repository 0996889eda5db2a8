# N keep-alive connections to a proxy on 127.0.0.1:PORT, one request each, left open; prints
# the RSS growth of process PID per connection. Used by memory-bench.sh.
#   python3 idle_conns.py N PORT PID
import socket, sys, time, resource, os
N=int(sys.argv[1]); port=int(sys.argv[2]); pid=int(sys.argv[3])
resource.setrlimit(resource.RLIMIT_NOFILE,(N+1000,N+1000))
def rss(): 
    for l in open(f'/proc/{pid}/status'):
        if l.startswith('VmRSS'): return int(l.split()[1])
req=b'GET /api/v1/items HTTP/1.1\r\nHost: origin.test:18090\r\nx-team: blue\r\n\r\n'
time.sleep(0.5); before=rss(); socks=[]
for i in range(N):
    s=socket.create_connection(('127.0.0.1',port)); s.sendall(req)
    buf=b''
    while not buf.endswith(b"hello") and b"0123" not in buf:
        d=s.recv(4096)
        if not d: raise SystemExit(f'closed at {i}')
        buf+=d
    socks.append(s)
time.sleep(1); after=rss()
print(f'{N} idle keep-alive connections: RSS {before} kB -> {after} kB, {(after-before)*1024/N:.0f} bytes each')
