"""The S3 double keeps a client's connection open between calls, as R2 and S3 do."""

from __future__ import annotations

import http.client
from urllib.parse import urlsplit

from devkit.s3 import s3_client


def test_one_connection_carries_call_after_call(s3_endpoint: str) -> None:
    """moto's own server closes the connection after every answer, so a benchmark of storage would
    measure reconnects that a real bucket never costs."""
    s3_client(s3_endpoint).create_bucket(Bucket="kept-alive")
    address = urlsplit(s3_endpoint)
    connection = http.client.HTTPConnection(address.hostname or "", address.port, timeout=10)
    try:
        sockets = []
        for index in range(3):
            connection.request("PUT", f"/kept-alive/users/alice/output/{index}.png", body=b"x")
            answer = connection.getresponse()
            answer.read()
            assert answer.status == 200
            assert not answer.will_close, answer.getheader("Connection")
            sockets.append(connection.sock)
        assert sockets[0] is not None and sockets.count(sockets[0]) == 3
    finally:
        connection.close()
    listed = s3_client(s3_endpoint).list_objects_v2(Bucket="kept-alive")
    assert [item["Key"] for item in listed["Contents"]] == [f"users/alice/output/{i}.png" for i in range(3)]
