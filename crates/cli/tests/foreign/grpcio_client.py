"""A foreign client: Python grpcio against a DistribuSync server over TLS.

Usage: grpcio_client.py STUBS_DIR TARGET CA_FILE
The token comes from DISTRIBUSYNC_TOKEN (sent as `authorization: Bearer`
metadata). Lists every file (printing "file PATH SIZE" per file), adds
2 + 40 + -1 (printing "sum N"), and checks that the same calls without the
token are refused with UNAUTHENTICATED. Any failure exits non-zero.
"""
import os
import sys

stubs, target, ca_file = sys.argv[1:4]
sys.path.insert(0, stubs)

import grpc  # noqa: E402
from distribusync.v1 import compute_pb2, compute_pb2_grpc  # noqa: E402
from distribusync.v1 import files_pb2, files_pb2_grpc  # noqa: E402

token = os.environ["DISTRIBUSYNC_TOKEN"]
with open(ca_file, "rb") as f:
    credentials = grpc.ssl_channel_credentials(root_certificates=f.read())
metadata = [("authorization", f"Bearer {token}")]

with grpc.secure_channel(target, credentials) as channel:
    grpc.channel_ready_future(channel).result(timeout=20)
    files = files_pb2_grpc.FilesStub(channel)
    compute = compute_pb2_grpc.ComputeStub(channel)

    for page in files.List(files_pb2.ListRequest(), metadata=metadata, timeout=20):
        for info in page.files:
            print(f"file {info.path} {info.size}")

    numbers = compute_pb2.Numbers(ints=compute_pb2.IntList(values=[2, 40, -1]))
    answer = compute.Add(compute_pb2.AddRequest(numbers=numbers), metadata=metadata, timeout=20)
    print(f"sum {answer.sum.int}")

    try:
        compute.Add(compute_pb2.AddRequest(numbers=numbers), timeout=20)
    except grpc.RpcError as e:
        if e.code() != grpc.StatusCode.UNAUTHENTICATED:
            sys.exit(f"without a token: {e.code()}, not UNAUTHENTICATED")
        print("without a token: UNAUTHENTICATED")
    else:
        sys.exit("without a token the server answered")
