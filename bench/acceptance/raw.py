# Raw gRPC client for issue 9 item 6 (and bits of 3, 5). usage: raw.py HOST:PORT
import os
import sys, grpc
sys.path.insert(0, os.environ.get('DS_PYGEN', '/tmp/ds-pygen'))
from distribusync.v1 import files_pb2 as F, files_pb2_grpc as FG, compute_pb2 as C, compute_pb2_grpc as CG
from google.protobuf import timestamp_pb2
import blake3
addr = sys.argv[1]
opts = [('grpc.max_send_message_length', -1), ('grpc.max_receive_message_length', 64 << 20)]
ch = grpc.insecure_channel(addr, options=opts)
files, comp = FG.FilesStub(ch), CG.ComputeStub(ch)
fails = 0
def check(name, fn, want_code, max_msg=2048):
    global fails
    try:
        r = fn(); print(f"  FAIL {name}: succeeded: {str(r)[:200]}"); fails += 1; return
    except grpc.RpcError as e:
        code, msg = e.code(), e.details() or ''
    ok = code in (want_code if isinstance(want_code, tuple) else (want_code,)) and len(msg) <= max_msg
    print(f"  {'ok  ' if ok else 'FAIL'} {name}: {code.name} ({len(msg)} chars) {msg[:160]!r}")
    if not ok: fails += 1
S = grpc.StatusCode
big = 'j' * (1 << 20)
check("GetJob 1 MiB id", lambda: comp.GetJob(C.GetJobRequest(job_id=big)), (S.NOT_FOUND, S.INVALID_ARGUMENT))
check("GetJobResult 1 MiB id", lambda: list(comp.GetJobResult(C.GetJobRequest(job_id=big))), (S.NOT_FOUND, S.INVALID_ARGUMENT))
check("CancelJob 1 MiB id", lambda: comp.CancelJob(C.CancelJobRequest(job_id=big)), (S.NOT_FOUND, S.INVALID_ARGUMENT))
check("Submit 1 MiB job id", lambda: comp.Submit(C.SubmitRequest(client_id='c', job_id=big, add=C.AddTask(numbers=C.Numbers(ints=C.IntList(values=[1,2]))))), S.INVALID_ARGUMENT)
check("Submit 1 MiB client id", lambda: comp.Submit(C.SubmitRequest(client_id=big, add=C.AddTask(numbers=C.Numbers(ints=C.IntList(values=[1,2]))))), S.INVALID_ARGUMENT)
check("Callbacks 1 MiB client id", lambda: next(iter(comp.Callbacks(C.CallbacksRequest(client_id=big), timeout=5))), S.INVALID_ARGUMENT)
check("ListJobs 1 MiB client id", lambda: comp.ListJobs(C.ListJobsRequest(client_id=big)), S.INVALID_ARGUMENT)
bigp = 'p' * (1 << 20)
check("Stat 1 MiB path", lambda: files.Stat(F.StatRequest(path=bigp)), S.INVALID_ARGUMENT)
check("Delete 1 MiB path", lambda: files.Delete(F.DeleteRequest(path=bigp)), S.INVALID_ARGUMENT)
check("Rename 1 MiB from", lambda: files.Rename(F.RenameRequest(**{'from': bigp, 'to': 'x'})), S.INVALID_ARGUMENT)
check("Rename 1 MiB to", lambda: files.Rename(F.RenameRequest(**{'from': 'x', 'to': bigp})), (S.INVALID_ARGUMENT, S.NOT_FOUND))
check("Download 1 MiB path", lambda: list(files.Download(F.DownloadRequest(path=bigp))), S.INVALID_ARGUMENT)
check("List 1 MiB prefix", lambda: list(files.List(F.ListRequest(prefix=bigp))), (S.INVALID_ARGUMENT,))
check("Watch? skip", lambda: (_ for _ in ()).throw(grpc.RpcError()) , S.UNKNOWN) if False else None
bad_unicode = 'a\u0301' * 200000  # NFD, not NFC: rule names path
check("Stat non-NFC 600 KB path", lambda: files.Stat(F.StatRequest(path=bad_unicode)), S.INVALID_ARGUMENT)

def upload(path, data, ts, **hdr):
    h = blake3.blake3(data).digest()
    def gen():
        yield F.UploadRequest(header=F.UploadHeader(path=path, size=len(data), hash=h, modified=ts, **hdr))
        if data: yield F.UploadRequest(chunk=data)
    return files.Upload(gen())
for secs, want in [(2**62, S.INVALID_ARGUMENT), (-(2**62), S.INVALID_ARGUMENT), (2**63-1, S.INVALID_ARGUMENT), (-(2**63), S.INVALID_ARGUMENT)]:
    check(f"Upload modified.seconds={secs}", lambda: upload(f"t{secs}.txt", b"hello", timestamp_pb2.Timestamp(seconds=secs)), want)
check("Upload modified.nanos=2e9", lambda: upload("tn.txt", b"hello", timestamp_pb2.Timestamp(seconds=1, nanos=2_000_000_000)), S.INVALID_ARGUMENT)
check("Upload modified.nanos=-1", lambda: upload("tn2.txt", b"hello", timestamp_pb2.Timestamp(seconds=1, nanos=-1)), S.INVALID_ARGUMENT)
# in range extremes must round-trip (Stat, disk)
import os
for secs in [2**33, 9223372036, -9223372036, 4102444800, 0, -1]:
    try:
        r = upload(f"ok{secs}.txt", b"hi", timestamp_pb2.Timestamp(seconds=secs, nanos=123456789))
        st = files.Stat(F.StatRequest(path=f"ok{secs}.txt"))
        ok = st.modified.seconds == secs and st.modified.nanos == 123456789
        print(f"  {'ok  ' if ok else 'FAIL'} Upload modified={secs}.123456789 -> Stat {st.modified.seconds}.{st.modified.nanos:09d}")
        if not ok: fails += 1
    except grpc.RpcError as e:
        print(f"  note Upload modified={secs}: {e.code().name} {e.details()[:200]!r}")
# over the message size limit
check("Upload one 8 MiB chunk message", lambda: upload("big.bin", b'x' * (8 << 20), timestamp_pb2.Timestamp(seconds=1)), S.RESOURCE_EXHAUSTED)
check("Stat with 5 MiB path (over 4 MiB limit)", lambda: files.Stat(F.StatRequest(path='q' * (5 << 20))), S.RESOURCE_EXHAUSTED)
check("Add with 130 MiB message", lambda: comp.Add(C.AddRequest(numbers=C.Numbers(ints=C.IntList(values=[1] * (17 << 20))))), S.RESOURCE_EXHAUSTED)
print("failures:", fails)
