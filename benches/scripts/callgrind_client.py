import socket, sys, time, threading
# Minimal keep-alive origin on 127.0.0.1:18090 and a client sending N requests through the gateway.
N=int(sys.argv[1]); gw=int(sys.argv[2])
def origin():
    srv=socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR,1); srv.bind(('127.0.0.1',18090)); srv.listen(16)
    while True:
        c,_=srv.accept()
        def serve(c):
            buf=b''
            while True:
                d=c.recv(65536)
                if not d: return
                buf+=d
                while b'\r\n\r\n' in buf:
                    _,buf=buf.split(b'\r\n\r\n',1)
                    c.sendall(b'HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello')
        threading.Thread(target=serve,args=(c,),daemon=True).start()
if sys.argv[3]=='origin':
    origin()
s=socket.create_connection(('127.0.0.1',gw))
req=b'GET http://origin.test:18090/api/v1/items?x=1 HTTP/1.1\r\nHost: origin.test:18090\r\nUser-Agent: cg\r\nAccept: */*\r\nx-team: blue\r\n\r\n'
t=time.time()
for i in range(N):
    s.sendall(req)
    buf=b''
    while not buf.endswith(b'hello'):
        d=s.recv(65536)
        if not d: raise SystemExit('closed at %d: %r'%(i,buf))
        buf+=d
print('ok', N, time.time()-t)
