"""hello-py: a Wisp HTTP function in Python (a wasi:http/proxy component, built by
componentize-py). `wisp deploy` builds it, uploads it and gives it a URL; it scales to zero
when idle and wakes on the next request."""

import os

from componentize_py_types import Ok
from wit_world import exports
from wit_world.imports.types import (
    Fields,
    IncomingRequest,
    OutgoingBody,
    OutgoingResponse,
    ResponseOutparam,
)


class IncomingHandler(exports.IncomingHandler):
    def handle(self, request: IncomingRequest, response_out: ResponseOutparam) -> None:
        path = request.path_with_query() or "/"
        # `[env]` in wisp.toml becomes the component's environment.
        greeting = os.environ.get("GREETING", "Hello")
        text = f"{greeting} from hello-py (Python) at {path}\n".encode()

        response = OutgoingResponse(Fields.from_list([("content-type", b"text/plain")]))
        body = response.body()
        ResponseOutparam.set(response_out, Ok(response))
        with body.write() as stream:
            stream.blocking_write_and_flush(text)
        OutgoingBody.finish(body, None)
