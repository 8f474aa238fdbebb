# Hostile compute memory mix, raw bytes (no Python int lists). usage: mem.py HOST:PORT SERVER_PID scenario
import sys, os, grpc, threading, time
addr, pid, scen = sys.argv[1], int(sys.argv[2]), sys.argv[3]
def vm(k):
    for l in open(f'/proc/{pid}/status'):
        if l.startswith(k): return int(l.split()[1]) // 1024
def varint(n):
    out = bytearray()
    while True:
        b = n & 0x7f; n >>= 7
        if n: out.append(b | 0x80)
        else: out.append(b); return bytes(out)
def ld(field, payload): return varint(field << 3 | 2) + varint(len(payload)) + payload
def numbers(n): return ld(1, ld(1, os.urandom(8 * n)))  # Numbers{ints: IntList{values}}
def submit_sort(client, n): return ld(1, client.encode()) + ld(5, ld(1, numbers(n)))
def submit_add(client, n): return ld(1, client.encode()) + ld(4, ld(1, numbers(n)))
def add_req(n): return ld(1, numbers(n))
ident = lambda b: b
opts = [('grpc.max_send_message_length', -1), ('grpc.max_receive_message_length', -1)]
res = {}
lock = threading.Lock()
def tally(k, e=None):
    with lock:
        key = k + ':' + ('OK' if e is None else e.code().name)
        res[key] = res.get(key, 0) + 1
        if e is not None and e.code() != grpc.StatusCode.RESOURCE_EXHAUSTED and key not in res.get('_msgs', {}):
            res.setdefault('_msgs', {})[key] = (e.details() or '')[:200]
        if e is not None and e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
            res.setdefault('_re', set()).add((e.details() or '')[:160])
def unary(method, payload, k):
    ch = grpc.insecure_channel(addr, options=opts)
    f = ch.unary_unary(method, request_serializer=ident, response_deserializer=ident)
    try: f(payload, timeout=120); tally(k)
    except grpc.RpcError as e: tally(k, e)
peak = [0]
stop = False
def watcher():
    while not stop:
        peak[0] = max(peak[0], vm('VmRSS')); time.sleep(0.05)
threading.Thread(target=watcher, daemon=True).start()
print(f"  idle RSS {vm('VmRSS')} MiB")
threads = []
def go(fn, *a):
    t = threading.Thread(target=fn, args=a); t.start(); threads.append(t)
idle_streams = []
if scen in ('submits', 'all'):
    # 12 concurrent Submits of 16M-number sorts (128 MiB messages each)
    p = submit_sort('sk-kept', 16_000_000)
    for i in range(12): go(unary, '/distribusync.v1.Compute/Submit', p, 'submit16M')
if scen in ('adds', 'all'):
    p = add_req(16_000_000)
    for i in range(12): go(unary, '/distribusync.v1.Compute/Add', p, 'add16M')
if scen in ('idle', 'all'):
    for i in range(10):
        ch = grpc.insecure_channel(addr, options=opts)
        f = ch.unary_stream('/distribusync.v1.Compute/Callbacks', request_serializer=ident, response_deserializer=ident)
        it = f(ld(1, b'sk-idle')); idle_streams.append((ch, it))  # never read
    p = submit_sort('sk-idle', 4_000_000)
    for i in range(8): go(unary, '/distribusync.v1.Compute/Submit', p, 'submit4M-idle')
if scen in ('sorts', 'all'):
    # 20 concurrent Sort streams of 16M numbers WITHOUT announcing total, responses read slowly
    def sort_stream(k):
        ch = grpc.insecure_channel(addr, options=opts)
        f = ch.stream_stream('/distribusync.v1.Compute/Sort', request_serializer=ident, response_deserializer=ident)
        CH = 128 * 1024
        def reqs():
            for i in range(16_000_000 // CH):
                yield ld(2, numbers(CH))
        try:
            n = 0
            for r in f(reqs(), timeout=300):
                n += 1; time.sleep(0.01)
            tally('sort16M-nototal')
        except grpc.RpcError as e: tally('sort16M-nototal', e)
    for i in range(20): go(sort_stream, i)
for t in threads: t.join()
time.sleep(1)
stop = True
print(f"  results: { {k: v for k, v in res.items() if not k.startswith('_')} }")
for k, m in res.get('_msgs', {}).items(): print(f"  other error {k}: {m!r}")
for m in res.get('_re', ()): print(f"  RESOURCE_EXHAUSTED message: {m!r}")
print(f"  peak RSS (sampled) {peak[0]} MiB, VmHWM {vm('VmHWM')} MiB, RSS now {vm('VmRSS')} MiB")
