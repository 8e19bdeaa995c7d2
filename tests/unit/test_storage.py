"""Stores addressed by URI: the same calls on a local folder and on the private S3 server."""

import io

import boto3
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import settings_environ
from nightrec.data import storage
from nightrec.settings import load_settings


@pytest.fixture(params=["local", "s3"])
def root(request, tmp_path):
    if request.param == "local":
        load_settings("local", settings_environ(tmp_path))
        return str(tmp_path / "store")
    endpoint = request.getfixturevalue("s3_endpoint")
    load_settings("local", settings_environ(tmp_path, s3_endpoint=endpoint, stores="s3://unused"))
    return request.getfixturevalue("s3_store") + "/store"


def test_files_and_folders_are_listed_with_size_time_and_etag(root):
    storage.write_bytes(storage.join(root, "day", "a.csv"), b"user_id\n1\n")
    storage.write_bytes(storage.join(root, "day", "sub", "b.csv"), b"x")
    storage.write_bytes(storage.join(root, "top.txt"), b"")
    listed = storage.listdir(storage.join(root, "day"))
    assert [(e.name, e.is_dir) for e in listed] == [("a.csv", False), ("sub", True)]
    assert listed[0].size == 10 and listed[0].modified is not None
    assert bool(listed[0].etag) == storage.is_s3(root)  # S3 gives each object an ETag
    assert [storage.name_of(e.uri) for e in storage.walk(root)] == ["a.csv", "b.csv", "top.txt"]
    assert storage.stat(storage.join(root, "day", "a.csv")).size == 10
    assert storage.stat(storage.join(root, "day", "missing.csv")) is None
    assert storage.listdir(storage.join(root, "nothing")) == [] and storage.walk(storage.join(root, "nothing")) == []


def test_a_file_is_replaced_whole_and_deleted(root):
    uri = storage.join(root, "f.jsonl")
    storage.write_bytes(uri, b"old\n")
    storage.write_bytes(uri, b"new\n")
    assert storage.read_bytes(uri) == b"new\n"
    assert [e.name for e in storage.listdir(root)] == ["f.jsonl"]  # no temporary file left beside it
    storage.delete(uri)
    assert storage.stat(uri) is None


def test_a_parquet_footer_is_read_through_a_seekable_reader(root):
    buffer = io.BytesIO()
    pq.write_table(pa.table({"user_id": list(range(1000))}), buffer)
    uri = storage.join(root, "t.parquet")
    storage.write_bytes(uri, buffer.getvalue())
    with storage.open_read(uri) as handle:
        assert pq.read_metadata(handle).num_rows == 1000


def test_an_s3_listing_goes_past_one_page(s3_endpoint, s3_store, tmp_path):
    load_settings("local", settings_environ(tmp_path, s3_endpoint=s3_endpoint, stores=s3_store))
    bucket = s3_store.removeprefix("s3://")
    client = boto3.client("s3", endpoint_url=s3_endpoint)
    for n in range(1005):  # S3 returns at most 1000 keys a page
        client.put_object(Bucket=bucket, Key=f"day/part-{n:04}.csv", Body=b"")
    assert len(storage.listdir(f"{s3_store}/day")) == len(storage.walk(f"{s3_store}/day")) == 1005
