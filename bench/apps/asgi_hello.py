"""Hello-world ASGI app, no framework: `/` answers hello world, `/pid` the
worker's pid. The peer (gunicorn + UvicornWorker, uvicorn) that bench/run
compares rsvisor's demo `/` route against, and the app the exec-mode tests
(tests/it/exec.rs) run under uvicorn."""


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    body = b"hello world"
    if scope["path"] == "/pid":
        import os

        body = str(os.getpid()).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})
