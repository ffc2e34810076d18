"""The service driven by the official `openai` Python SDK: every call a user makes.

Run by the Rust integration test `service::the_official_openai_sdk_*`, which starts the real
service and sim-engine and passes:
  BASE_URL   http://127.0.0.1:PORT/v1
  KEY_A      an API key of owner A
  KEY_B      an API key of owner B
Each check prints "ok NAME"; the first failure raises (non-zero exit, traceback on stderr).
"""

import io
import json
import os
import sys
import time

import urllib.request

import openai
from openai import OpenAI

BASE = os.environ["BASE_URL"]
A = OpenAI(base_url=BASE, api_key=os.environ["KEY_A"], max_retries=0)
B = OpenAI(base_url=BASE, api_key=os.environ["KEY_B"], max_retries=0)
# Strict mode: every response must validate against the SDK's pydantic models.
STRICT = OpenAI(base_url=BASE, api_key=os.environ["KEY_A"], max_retries=0,
                _strict_response_validation=True)


def line(custom_id, content="hello", **extra):
    body = {"model": "sim-model", "messages": [{"role": "user", "content": content}]}
    body.update(extra)
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body}


def jsonl(lines):
    return ("\n".join(json.dumps(l) for l in lines) + "\n").encode()


def upload(client, lines, name="input.jsonl"):
    return client.files.create(file=(name, jsonl(lines)), purpose="batch")


def wait(client, batch_id, statuses, limit=60):
    deadline = time.time() + limit
    while time.time() < deadline:
        b = client.batches.retrieve(batch_id)
        if b.status in statuses:
            return b
        time.sleep(0.2)
    raise AssertionError(f"{batch_id} still {b.status} after {limit}s: {b}")


def read_jsonl(client, file_id):
    text = client.files.content(file_id).text
    return [json.loads(l) for l in text.splitlines() if l.strip()]


def expect(error_type, fn, *args, **kwargs):
    try:
        fn(*args, **kwargs)
    except error_type as e:
        body = e.body if isinstance(e.body, dict) else {}
        assert "message" in body and "type" in body, f"not an OpenAI error body: {e.body}"
        return e
    raise AssertionError(f"expected {error_type.__name__} from {fn.__name__}")


def ok(name):
    print(f"ok {name}", flush=True)


def files_round_trip():
    lines = [line(f"f{i}") for i in range(3)]
    f = A.files.create(file=("mine.jsonl", jsonl(lines)), purpose="batch",
                       expires_after={"anchor": "created_at", "seconds": 7200})
    assert f.object == "file" and f.purpose == "batch" and f.status == "processed", f
    assert f.bytes == len(jsonl(lines)) and f.filename == "mine.jsonl", f
    assert f.expires_at == f.created_at + 7200, f
    assert STRICT.files.retrieve(f.id).id == f.id
    assert A.files.content(f.id).content == jsonl(lines)
    # A Range request returns exactly the asked bytes.
    ranged = urllib.request.Request(f"{BASE}/files/{f.id}/content", headers={
        "Authorization": f"Bearer {os.environ['KEY_A']}", "Range": "bytes=2-9"})
    with urllib.request.urlopen(ranged) as r:
        assert r.status == 206 and r.read() == jsonl(lines)[2:10], r.status
        assert r.headers["Content-Range"] == f"bytes 2-9/{f.bytes}", r.headers
    deleted = A.files.delete(f.id)
    assert deleted.deleted and deleted.id == f.id and deleted.object == "file"
    expect(openai.NotFoundError, A.files.retrieve, f.id)
    ok("files_round_trip")


def file_list_pagination():
    ids = [upload(A, [line("p")], f"page{i}.jsonl").id for i in range(7)]
    seen = [f.id for f in A.files.list(limit=2, purpose="batch")]
    for i in ids:
        assert i in seen, f"{i} missing from auto-paged list"
    assert len(seen) == len(set(seen)), "a page repeated a file"
    page = A.files.list(limit=3, order="asc", purpose="batch")
    assert page.has_more and len(page.data) == 3
    asc = [f.created_at for f in page.data]
    assert asc == sorted(asc)
    ok("file_list_pagination")


def batch_completes_with_output_and_errors():
    lines = [line(f"r{i}", f"question {i}") for i in range(30)]
    # Two lines the engine refuses with a 400: they go to the error file.
    lines.append(line("bad-1", sim={"status": 400}))
    lines.append(line("bad-2", sim={"status": 400}))
    f = upload(A, lines)
    b = STRICT.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions",
                              completion_window="24h", metadata={"team": "search"})
    assert b.status == "validating" and b.metadata == {"team": "search"}, b
    assert b.expires_at == b.created_at + 86400, b
    done = wait(STRICT, b.id, {"completed", "failed"})
    assert done.status == "completed", done
    assert done.request_counts.total == 32, done.request_counts
    assert done.request_counts.completed == 30 and done.request_counts.failed == 2, done
    assert done.in_progress_at and done.finalizing_at and done.completed_at, done
    assert done.model == "sim-model" and done.usage.output_tokens > 0, done
    out = read_jsonl(A, done.output_file_id)
    assert sorted(o["custom_id"] for o in out) == sorted(f"r{i}" for i in range(30))
    assert all(o["response"]["status_code"] == 200 for o in out)
    errors = read_jsonl(A, done.error_file_id)
    assert sorted(e["custom_id"] for e in errors) == ["bad-1", "bad-2"], errors
    meta = A.files.retrieve(done.output_file_id)
    assert meta.purpose == "batch_output", meta
    ok("batch_completes_with_output_and_errors")


def all_succeeded_means_no_error_file():
    f = upload(A, [line(f"s{i}") for i in range(5)])
    b = A.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions",
                         completion_window="24h")
    done = wait(A, b.id, {"completed"})
    assert done.error_file_id is None and done.output_file_id, done
    ok("all_succeeded_means_no_error_file")


def invalid_file_fails_with_line_numbers():
    good = line("v1")
    missing_method = {"custom_id": "v2", "url": "/v1/chat/completions", "body": good["body"]}
    raw = jsonl([good, missing_method]) + b"{not json\n" + jsonl([line("v1")])
    f = A.files.create(file=("broken.jsonl", raw), purpose="batch")
    b = A.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions",
                         completion_window="24h")
    failed = wait(A, b.id, {"failed", "completed"})
    assert failed.status == "failed" and failed.failed_at, failed
    by_line = {e.line: e.code for e in failed.errors.data}
    assert 2 in by_line and 3 in by_line and 4 in by_line, failed.errors
    assert failed.output_file_id is None
    ok("invalid_file_fails_with_line_numbers")


def wrong_endpoint_and_unknown_model_fail():
    f = upload(A, [line("e1")])
    b = A.batches.create(input_file_id=f.id, endpoint="/v1/embeddings", completion_window="24h")
    failed = wait(A, b.id, {"failed", "completed"})
    assert failed.status == "failed" and failed.errors.data[0].code == "url_mismatch", failed
    lines = [line("m1")]
    lines[0]["body"]["model"] = "no-such-model"
    f = upload(A, lines)
    b = A.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions",
                         completion_window="24h")
    failed = wait(A, b.id, {"failed", "completed"})
    assert failed.errors.data[0].code == "model_not_found", failed.errors
    assert "no-such-model" in failed.errors.data[0].message
    ok("wrong_endpoint_and_unknown_model_fail")


def cancel_writes_unsent_lines_as_cancelled():
    # Requests that hang: nothing finishes, the cancel ends them after the grace.
    f = upload(A, [line(f"c{i}", sim={"hang": True}) for i in range(20)])
    b = A.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions",
                         completion_window="24h")
    wait(A, b.id, {"in_progress"})
    c = A.batches.cancel(b.id)
    assert c.status == "cancelling" and c.cancelling_at, c
    done = wait(A, b.id, {"cancelled"})
    assert done.cancelled_at and done.request_counts.failed == 0, done
    assert done.output_file_id is None, done
    errors = read_jsonl(A, done.error_file_id)
    assert len(errors) == 20 and all(e["error"]["code"] == "batch_cancelled" for e in errors), errors[:2]
    again = A.batches.cancel(b.id)
    assert again.status == "cancelled"
    ok("cancel_writes_unsent_lines_as_cancelled")


def cancel_of_a_finished_batch_is_a_400():
    f = upload(A, [line("x")])
    b = A.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions",
                         completion_window="24h")
    wait(A, b.id, {"completed"})
    e = expect(openai.BadRequestError, A.batches.cancel, b.id)
    assert e.status_code == 400
    ok("cancel_of_a_finished_batch_is_a_400")


def short_window_expires_and_keeps_finished_results():
    lines = [line(f"q{i}") for i in range(5)] + [line(f"h{i}", sim={"hang": True}) for i in range(5)]
    f = upload(A, lines)
    b = A.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions",
                         completion_window="3s")
    assert b.expires_at == b.created_at + 3, b
    done = wait(A, b.id, {"expired", "completed"}, limit=30)
    assert done.status == "expired" and done.expired_at, done
    assert done.request_counts.completed == 5 and done.request_counts.failed == 0, done
    out = read_jsonl(A, done.output_file_id)
    assert sorted(o["custom_id"] for o in out) == [f"q{i}" for i in range(5)]
    errors = read_jsonl(A, done.error_file_id)
    assert sorted(e["custom_id"] for e in errors) == [f"h{i}" for i in range(5)]
    assert all(e["error"]["code"] == "batch_expired" for e in errors)
    ok("short_window_expires_and_keeps_finished_results")


def batch_list_pagination():
    f = upload(A, [line("l")])
    made = [A.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions",
                             completion_window="24h").id for _ in range(5)]
    page = STRICT.batches.list(limit=2)
    assert len(page.data) == 2 and page.has_more
    assert page.data[0].id == made[-1], "newest first"
    seen = [b.id for b in A.batches.list(limit=2)]
    for i in made:
        assert i in seen
    assert len(seen) == len(set(seen))
    for i in made:
        wait(A, i, {"completed"})
    ok("batch_list_pagination")


def not_found_and_bad_requests():
    expect(openai.NotFoundError, A.files.retrieve, "file-nope")
    expect(openai.NotFoundError, A.files.content, "file-nope")
    expect(openai.NotFoundError, A.files.delete, "file-nope")
    expect(openai.NotFoundError, A.batches.retrieve, "batch_nope")
    expect(openai.NotFoundError, A.batches.cancel, "batch_nope")
    e = expect(openai.NotFoundError, A.batches.create, input_file_id="file-nope",
               endpoint="/v1/chat/completions", completion_window="24h")
    assert e.param == "input_file_id", e.param
    f = upload(A, [line("n")])
    e = expect(openai.BadRequestError, A.batches.create, input_file_id=f.id,
               endpoint="/v1/chat/completions", completion_window="forever")
    assert e.param == "completion_window"
    e = expect(openai.BadRequestError, A.batches.create, input_file_id=f.id,
               endpoint="/v1/nope", completion_window="24h")
    assert e.param == "endpoint"
    e = expect(openai.BadRequestError, A.batches.create, input_file_id=f.id,
               endpoint="/v1/chat/completions", completion_window="24h",
               metadata={f"k{i}": "v" for i in range(17)})
    assert e.param == "metadata"
    expect(openai.BadRequestError, A.files.create, file=("x.csv", b"a,b\n1,2\n"), purpose="batch")
    expect(openai.AuthenticationError,
           OpenAI(base_url=BASE, api_key="wrong", max_retries=0).files.list)
    ok("not_found_and_bad_requests")


def other_owners_objects_are_invisible():
    f = upload(A, [line("o")])
    b = A.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions",
                         completion_window="24h")
    expect(openai.NotFoundError, B.files.retrieve, f.id)
    expect(openai.NotFoundError, B.files.content, f.id)
    expect(openai.NotFoundError, B.files.delete, f.id)
    expect(openai.NotFoundError, B.batches.retrieve, b.id)
    expect(openai.NotFoundError, B.batches.cancel, b.id)
    expect(openai.NotFoundError, B.batches.create, input_file_id=f.id,
           endpoint="/v1/chat/completions", completion_window="24h")
    assert f.id not in [x.id for x in B.files.list()]
    assert b.id not in [x.id for x in B.batches.list()]
    wait(A, b.id, {"completed"})
    ok("other_owners_objects_are_invisible")


def deleting_the_input_of_a_running_batch_does_not_break_it():
    f = upload(A, [line(f"d{i}") for i in range(200)])
    b = A.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions",
                         completion_window="24h")
    A.files.delete(f.id)
    done = wait(A, b.id, {"completed", "failed"})
    assert done.status == "completed" and done.request_counts.completed == 200, done
    ok("deleting_the_input_of_a_running_batch_does_not_break_it")


def image_and_video_batches_keep_their_media_as_files():
    def media_line(custom_id, url, **body):
        return {"custom_id": custom_id, "method": "POST", "url": url,
                "body": {"model": "sim-model", **body}}

    f = upload(A, [media_line(f"img{i}", "/v1/images/generations", prompt=f"cat {i}", n=2)
                   for i in range(3)])
    b = STRICT.batches.create(input_file_id=f.id, endpoint="/v1/images/generations",
                              completion_window="24h")
    done = wait(STRICT, b.id, {"completed", "failed"})
    assert done.status == "completed" and done.request_counts.completed == 3, done
    out = read_jsonl(A, done.output_file_id)
    images = [item for o in out for item in o["response"]["body"]["data"]]
    assert len(images) == 6 and all("b64_json" not in i for i in images), images
    for item in images:
        content = A.files.content(item["file"]["id"]).read()
        assert content.startswith(b"\x89PNG\r\n\x1a\n"), content[:16]
        assert len(content) == item["file"]["bytes"] and item["file"]["mime_type"] == "image/png"
    meta = A.files.retrieve(images[0]["file"]["id"])
    assert meta.purpose == "batch_output" and meta.bytes == images[0]["file"]["bytes"], meta
    expect(openai.NotFoundError, B.files.content, images[0]["file"]["id"])

    f = upload(A, [media_line("film", "/v1/videos", prompt="waves", seconds="4")])
    b = A.batches.create(input_file_id=f.id, endpoint="/v1/videos", completion_window="24h")
    done = wait(A, b.id, {"completed", "failed"})
    assert done.status == "completed", done
    video = read_jsonl(A, done.output_file_id)[0]["response"]["body"]
    assert video["status"] == "completed" and video["object"] == "video", video
    assert A.files.content(video["file"]["id"]).read().endswith(b"sim video of waves")
    ok("image_and_video_batches_keep_their_media_as_files")


CHECKS = [
    files_round_trip, file_list_pagination, batch_completes_with_output_and_errors,
    all_succeeded_means_no_error_file, invalid_file_fails_with_line_numbers,
    wrong_endpoint_and_unknown_model_fail, cancel_writes_unsent_lines_as_cancelled,
    cancel_of_a_finished_batch_is_a_400, short_window_expires_and_keeps_finished_results,
    batch_list_pagination, not_found_and_bad_requests, other_owners_objects_are_invisible,
    deleting_the_input_of_a_running_batch_does_not_break_it,
    image_and_video_batches_keep_their_media_as_files,
]

if __name__ == "__main__":
    only = sys.argv[1:]
    for check in CHECKS:
        if not only or check.__name__ in only:
            check()
    print("all checks passed", flush=True)
