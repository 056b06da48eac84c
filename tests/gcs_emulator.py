"""gcp-storage-emulator as the GCS clients bert_jax uses need it: `python tests/gcs_emulator.py
start --host=127.0.0.1 --port=PORT --in-memory --default-bucket=B` (tests/conftest.py starts it).

The emulator (2026.7) neither sends an object's generation with its bytes (`x-goog-generation`)
nor honours generation preconditions (`ifGenerationMatch`, `ifGenerationNotMatch`). Tensorstore's
OCDBT driver, under Orbax, relies on both to commit its manifest: without them a save fails now
and then with "Malformed StorageGeneration" (or silently loses a concurrent update). This adds
them, as the real service behaves; nothing in bert_jax depends on the emulator.
"""

import http.server
import sys
from http import HTTPStatus

from gcp_storage_emulator.exceptions import NotFound
from gcp_storage_emulator.handlers import objects


def _generation(storage, bucket: str, name: str) -> str:
    try:
        return str(storage.get_file_obj(bucket, name).get("generation") or "0")
    except NotFound:
        return "0"


def _precondition_failed(request, storage, name: str | None) -> HTTPStatus | None:
    if not name:
        return None
    current = _generation(storage, request.params["bucket_name"], name)
    match = request.query.get("ifGenerationMatch")
    if match and match[0] != current:
        return HTTPStatus.PRECONDITION_FAILED
    not_match = request.query.get("ifGenerationNotMatch")
    if not_match and not_match[0] == current:
        return HTTPStatus.NOT_MODIFIED
    return None


def _refuse(response, status: HTTPStatus) -> None:
    response.status = status
    if status == HTTPStatus.PRECONDITION_FAILED:
        response.json({"error": {"code": 412, "message": "Precondition Failed"}})


_insert, _download = objects.insert, objects.download


def insert(request, response, storage, *args, **kwargs):
    name = (request.query.get("name") or [None])[0]
    if "upload_id" not in request.query:  # the precondition is on the first request
        status = _precondition_failed(request, storage, name)
        if status is not None:
            return _refuse(response, status)
    return _insert(request, response, storage, *args, **kwargs)


def download(request, response, storage, *args, **kwargs):
    name = request.params.get("object_id")
    status = _precondition_failed(request, storage, name)
    if status is not None:
        return _refuse(response, status)
    result = _download(request, response, storage, *args, **kwargs)
    if response.status in (HTTPStatus.OK, HTTPStatus.PARTIAL_CONTENT):
        response["x-goog-generation"] = _generation(storage, request.params["bucket_name"], name)
        response["x-goog-metageneration"] = "1"
    return result


objects.insert, objects.download = insert, download  # before the server builds its routes
# One request at a time, as the emulator serves them: a deep accept queue instead of refused
# connections when tensorstore opens many at once.
http.server.HTTPServer.request_queue_size = 1024

if __name__ == "__main__":
    from gcp_storage_emulator.__main__ import main

    sys.exit(main())
